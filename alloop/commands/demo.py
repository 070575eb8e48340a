"""The whole label-query cycle on a bundled dataset, with a simulated labeler.

The labeler answers from the pool's own target column, which alloop otherwise never reads.
Each round: query k rows, fill in their targets, ingest the file (which retrains), report the test
metric.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from alloop.commands.common import open_pool_of
from alloop.commands.ingest import ingest
from alloop.commands.init import init_run
from alloop.commands.query import query
from alloop.commands.train import train
from alloop.errors import UserError
from alloop.io import atomic, rundir, tables
from alloop.io import pool as poolio
from alloop.io.datasets import dataset_meta, datasets_dir
from alloop.reporting import Reporter


def _free_name(base: str) -> str:
    name, i = base, 1
    while rundir.resolve_run_path(name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def _seed_file(meta: dict, folder: Path, initial: int, seed: int, tmp: Path) -> Path:
    """The dataset's own seed labels if it has them, else ``initial`` random pool rows with their targets."""
    own = folder / "seed_labels.parquet"
    if own.exists():
        return own
    info = poolio.open_pool(folder / "pool.parquet", id_col=meta["id"], targets=(meta["target"],))
    ids = poolio.scan_ids(info)
    pick = np.sort(
        np.random.default_rng(seed).choice(ids, size=min(initial, len(ids)), replace=False)
    )
    rows = poolio.take_rows(info, pick, with_targets=True)
    path = tmp / "seed.parquet"
    atomic.write_table_atomic(path, rows[[meta["id"], meta["target"]]], "parquet")
    return path


def answer(run: rundir.Run, query_path: Path, out: Path) -> Path:
    """Simulated labeler: fill the query file's target column from the pool's target column."""
    info = open_pool_of(run)
    if not info.targets:
        raise UserError(
            "this pool has no target column, so the demo's simulated labeler cannot answer"
        )
    q = tables.read_table(query_path)
    truth = poolio.take_rows(info, q[info.id_col].to_numpy(), with_targets=True)
    for t in run.targets:
        q[t] = truth[t].to_numpy()
    atomic.write_table_atomic(out, q, "csv")
    return out


def run_demo(
    dataset: str = "diabetes",
    rounds: int = 5,
    k: int = 10,
    initial: int = 10,
    strategy: str | None = None,
    model: dict | None = None,
    s: float | str | None = None,
    name: str | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
    on_round=None,
) -> dict:
    """Run init → (query → answer → ingest) × rounds; returns the run path and the per-round figures."""
    reporter = reporter or Reporter()
    if rounds < 1 or k < 1:
        raise UserError("--rounds and -k must be at least 1")
    meta = dataset_meta(dataset)
    folder = datasets_dir() / dataset
    name = name or _free_name(f"demo-{dataset}")
    defaults = meta.get("demo", {})
    model = model or defaults.get("model")  # else alloop init's default (config.default_model)
    s = s if s is not None else defaults.get("s")  # else init's default (config.default_s)
    with tempfile.TemporaryDirectory() as tmp:
        seed_path = _seed_file(meta, folder, initial, seed, Path(tmp))
        init_run(
            name,
            str(folder / "pool.parquet"),
            id_col=meta["id"],
            targets=[meta["target"]],
            labels=str(seed_path),
            test=str(folder / "test.parquet"),
            model=model,
            s=s,
            task=meta.get("task", "regression"),
            classes=meta.get(
                "classes"
            ),  # classification: every class from the start, though the seed labels may miss some
            train={"seed": seed, **defaults.get("train", {})},
            reporter=reporter,
        )
        first = train(name, reporter=reporter)
        rows = [_round_figures(0, first)]
        if on_round:
            on_round(rows[-1])
        for r in range(1, rounds + 1):
            left = _rows_left(name)
            if left == 0:
                reporter.info(f"every pool row is labeled after round {r - 1}: the demo ends there")
                break
            if k > left:
                reporter.info(f"round {r} asks for the {left} rows left, not {k}")
            q = query(name, k=min(k, left), strategy=strategy, reporter=reporter)
            run = rundir.open_run(name)
            filled = answer(run, Path(q["path"]), Path(tmp) / f"answers-{r:04d}.csv")
            done = ingest(name, str(filled), reporter=reporter)
            rows.append(_round_figures(r, done["trained"], q["strategy"]))
            if on_round:
                on_round(rows[-1])
    return {"run": str(rundir.resolve_run_path(name)), "dataset": dataset, "rounds": rows}


def _rows_left(name: str) -> int:
    """Pool rows neither labeled nor outstanding (a query refuses a larger -k)."""
    run = rundir.open_run(name)
    return open_pool_of(run).n_rows - run.n_labels - len(run.outstanding)


def _round_figures(r: int, trained: dict, strategy: str | None = None) -> dict:
    keep = {
        k: v
        for k, v in trained.items()
        if k.startswith("test_") or k in ("labels", "residual", "train_loss")
    }
    return {"round": r, "strategy": strategy, **keep}
