"""``alloop query``: score the pool with the run's model and write the rows most worth labeling to a file.

The run's state becomes a ``strategies.Round`` (labeled rows, the trained model and its tangent, the
seed) and the chosen strategy runs through ``strategies.select``, the same call the simulation makes.
``engine="ray"`` keeps the same rows on a Ray cluster (``strategies.distributed``): the actors rebuild
the round from a ``RoundRecipe`` (arrays only: the run directory stays on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alloop import strategies
from alloop.commands import labelstudio, withdraw
from alloop.commands.common import (
    config_of,
    inheritance,
    labeled_arrays,
    load_checkpoint,
    open_pool_of,
)
from alloop.commands.status import needs_training
from alloop.commands.train import train_locked
from alloop.config import RunConfig
from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.io import ray_cluster, rundir
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.strategies import Round, Selection, Strategy, TrainedModel
from alloop.strategies.stream import check_devices
from alloop.training import choose_s
from alloop.training import fit as fitting

QUERY_FORMATS = ("csv", "parquet", "jsonl", "labelstudio")
DEFAULT_BATCH_ROWS = strategies.DEFAULT_BATCH_ROWS
ENGINES = ("local", "ray")
OWN_COLUMNS = ("rank", "score")  # what a query file adds beside the pool's id, features and targets


def query(
    name: str,
    *,
    k: int = 20,
    strategy: str | None = None,
    fmt: str = "csv",
    seed: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    devices: int = 1,
    wait: float = 5.0,
    reporter: Reporter | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    keep_workers: float = 0.0,
    reask_after: float | None = None,
) -> dict:
    """Score the pool and write the best ``k`` unlabeled rows to queries/round-NNNN.<fmt>.

    ``strategy``: None takes the default of the run's task and model (``strategies.default_for``). ``devices``: split every
    batch's rows over that many local devices (data-parallel scoring). ``engine="ray"``: score on the Ray
    cluster at ``address`` (None: a local one; "auto": the one this machine belongs to) with ``workers``
    actors; the same query file as the local engine. ``keep_workers`` > 0 (a running cluster only): the actors stay
    on it, to serve the next queries of the same model and features without starting again, until idle that many seconds.
    ``reask_after``: rows outstanding from queries more than that many days old go back to the pool
    first (``alloop withdraw``), so this query may ask them again.
    """
    reporter = reporter or Reporter()
    check_format(fmt)
    check_engine(engine, address, workers, keep_workers)
    run, strat = open_for_query(name, k, strategy, devices)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        info = open_pool_of(run)
        back = [] if reask_after is None else withdraw.expired(run, reask_after)
        exclude = excluded_ids(run, back)
        check_rows_left(run, info.n_rows, k, len(exclude))
        if needs_training(run):
            reporter.info(f"the model is older than the labels ({run.n_labels}): training first")
            run, _ = train_locked(run, info, reporter, devices=devices)
        rnd = round_of(run, info, query_seed(run, seed), batch_rows, devices)
        runner = (
            None
            if engine == "local"
            else ray_engine(run, rnd, strat, address, workers, keep_workers, reporter)
        )
        sel = select_rows(info, rnd, strat, k, reporter, exclude, runner)
        if back:
            reporter.info(
                f"{len(back)} rows outstanding for over {reask_after:g} days returned to the pool"
            )
        record, path = commit_query(
            run,
            info,
            sel,
            strat.name,
            fmt,
            reporter,
            extra={
                **({} if runner is None else {"engine": engine}),
                **({"returned": len(back)} if back else {}),
            },
            returned=back,
        )
    return {**record, "path": str(path), "note": sel.note}


def check_format(fmt: str) -> None:
    if fmt not in QUERY_FORMATS:
        raise UserError(f"unknown --format {fmt!r}: choose csv, parquet, jsonl or labelstudio")


def check_engine(
    engine: str, address: str | None, workers: int | None, keep_workers: float = 0.0
) -> None:
    if engine not in ENGINES:
        raise UserError(f"unknown --engine {engine!r}: choose local or ray")
    if engine != "ray" and (address is not None or workers is not None or keep_workers):
        raise UserError(
            "--address, --workers and --keep-workers apply to --engine ray only: add --engine ray, or leave them out"
        )
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if not keep_workers >= 0:
        raise UserError("--keep-workers is seconds of idleness, 0 or more")
    if engine == "ray":
        ray = ray_cluster.require_ray()
        if keep_workers and address is None and not ray.is_initialized():
            raise UserError(
                "--keep-workers needs a running cluster (--address auto after `ray start --head`, or ray://HOST:10001): "
                "the local cluster of one query ends with it"
            )


def open_for_query(
    name: str, k: int, strategy: str | None, devices: int
) -> tuple[rundir.Run, Strategy]:
    """The run a query will score and its strategy (None: the task's default), after checking the options."""
    if strategy is not None:
        strategies.get(strategy, "--strategy")
    if k < 1:
        raise UserError("-k must be at least 1")
    check_devices(devices)
    run = rundir.open_run(name)
    model = config_of(run).model
    return run, strategies.for_query(
        strategy, run.task, "auto" if model.is_auto else model.kind
    )  # auto's default, whatever it chose


def query_seed(run: rundir.Run, seed: int | None) -> int:
    """The seed of this round's random choices: the run's seed plus the round, unless given."""
    return config_of(run).seed + run.round if seed is None else seed


def round_of(
    run: rundir.Run,
    info: poolio.PoolInfo,
    seed: int,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    devices: int = 1,
) -> Round:
    """What the strategies may use this round: labeled rows, the trained model (None before training), the seed."""
    config = config_of(run)
    ids, lx, ly = labeled_arrays(run, info)
    tree, meta = load_checkpoint(run)
    model = None if tree is None else trained_model(run, config, tree, meta, lx, ly, seed)
    return Round(
        task=run.task,
        stats=fitting.standardizer(config),
        labeled_x=lx,
        labeled_y=ly,
        seed=seed,
        model=model,
        batch_rows=batch_rows,
        devices=devices,
        labeled_uniform=uniform_flags(run, ids),
    )


def uniform_flags(run: rundir.Run, ids) -> np.ndarray:
    """True for each labeled id that an earlier query drew uniformly from the pool (``random``, a mixed batch's share)."""
    drawn = set(run.state.get("uniform", []))
    return np.fromiter((str(i) in drawn for i in ids), bool, len(ids))


def uniform_state(run: rundir.Run, sel: Selection) -> dict:
    """The state's record of uniform draws with this query's added (empty when it drew none uniformly)."""
    if sel.uniform is None or not np.any(sel.uniform):
        return {}
    return {
        "uniform": [
            *run.state.get("uniform", []),
            *(str(i) for i in sel.ids[np.asarray(sel.uniform, bool)]),
        ]
    }


def trained_model(
    run: rundir.Run, config: RunConfig, tree: dict, meta: dict, lx, ly, seed: int
) -> TrainedModel:
    """The checkpoint as strategies see it; committee members are trained only if a strategy asks for them."""
    inherited = inheritance(run)
    s = choose_s.trained_s(config, meta)
    problem = fitting.build_problem(config, tree["params"], inherited.get("anchor"))

    def members() -> list:
        return fitting.bootstrap_members(
            config.with_s(s), lx, ly, strategies.builtin.COMMITTEE_SIZE, seed, **inherited
        )

    return TrainedModel(
        problem=problem,
        params=tree["params"],
        tangent=tree["tangent"],
        noise=np.asarray(meta["noise"], np.float32),
        s=s,
        target=meta.get("target"),
        members=members,
    )


def excluded_ids(run: rundir.Run, returned: list[str] = ()) -> np.ndarray:
    """The ids a query must not ask: labeled or outstanding (less those ``returned``)."""
    kind = np.int64 if run.id_kind == "int" else object
    gone = set(returned)
    keys = [k for k in run.outstanding if k not in gone]
    outstanding = np.array([int(k) for k in keys] if kind is np.int64 else keys, dtype=kind)
    labeled = rundir.read_labels(run)["id"].to_numpy()
    return np.concatenate([labeled, outstanding]).astype(kind)


def check_rows_left(run: rundir.Run, pool_rows: int, k: int, excluded: int) -> None:
    """Refuse a ``k`` above the pool rows left to ask: they would all become outstanding at once."""
    left = pool_rows - excluded
    back = f"`alloop withdraw {run.name} --round N` (or --all) returns unanswered rows to the pool"
    if left <= 0:
        raise UserError(
            f"every pool row of run '{run.name}' is labeled or outstanding: ingest the "
            f"outstanding labels, add rows to the pool, or {back}"
        )
    if k > left:
        raise UserError(
            f"-k {k} is more than the {left} pool rows left to ask ({excluded} of {pool_rows} "
            f"are labeled or outstanding): pass -k {left} or less"
        )


def select_rows(
    info: poolio.PoolInfo,
    rnd: Round,
    strat: Strategy,
    k: int,
    reporter: Reporter,
    exclude: np.ndarray,
    engine=None,
) -> Selection:
    """Run the strategy over the pool's rows that are neither labeled nor outstanding, with a progress bar."""
    where = "" if engine is None else " on Ray"
    with reporter.progress(f"scoring the pool{where} ({strat.name})", info.n_rows) as advance:
        return strategies.select(strat, info, rnd, exclude, k, advance, engine)


@dataclass(frozen=True)
class RoundRecipe:
    """The round as arrays, picklable: what a Ray actor rebuilds the round (and its jitted scorers) from.

    Everything comes from the run on the driver: config, checkpoint parameters and tangent, the base
    model's anchor, the labeled rows, the committee's members when the strategy uses them.
    """

    config: dict
    task: str
    labeled_x: np.ndarray
    labeled_y: np.ndarray
    seed: int
    batch_rows: int
    model: dict | None = None  # params, tangent, noise, s, target, anchor, members

    def __call__(self) -> Round:
        config = RunConfig.from_json(self.config)
        model = None
        if self.model is not None:
            m = self.model
            members = m["members"]
            problem = fitting.build_problem(config, m["params"], m["anchor"])
            model = TrainedModel(
                problem=problem,
                params=m["params"],
                tangent=m["tangent"],
                noise=m["noise"],
                s=m["s"],
                target=m["target"],
                members=None if members is None else (lambda: members),
            )
        return Round(
            task=self.task,
            stats=fitting.standardizer(config),
            labeled_x=self.labeled_x,
            labeled_y=self.labeled_y,
            seed=self.seed,
            model=model,
            batch_rows=self.batch_rows,
            devices=1,
        )


def ray_engine(
    run: rundir.Run,
    rnd: Round,
    strat: Strategy,
    address: str | None,
    workers: int | None,
    keep_workers: float = 0.0,
    reporter: Reporter | None = None,
):
    """The Ray engine for this round: the recipe of ``rnd`` (committee members trained once, here) and where to run."""
    import jax

    from alloop.strategies import distributed

    host = lambda tree: jax.tree.map(np.asarray, tree)
    model = None
    if rnd.model is not None:
        m = rnd.model
        anchor = inheritance(run).get("anchor")
        cold = strategies.cold_start_note(strat, rnd) is not None
        members = (
            host(m.member_params())
            if strategies.Needs.MEMBERS in strat.needs and not cold
            else None
        )
        model = {
            "params": host(m.params),
            "tangent": host(m.tangent),
            "noise": np.asarray(m.noise),
            "s": m.s,
            "target": m.target,
            "anchor": None if anchor is None else (host(anchor[0]), host(anchor[1]), anchor[2]),
            "members": members,
        }
    recipe = RoundRecipe(
        dict(run.config),
        rnd.task,
        np.asarray(rnd.labeled_x),
        np.asarray(rnd.labeled_y),
        rnd.seed,
        rnd.batch_rows,
        model,
    )
    return distributed.RayEngine(
        recipe, address, workers, keep_workers, None if reporter is None else reporter.info
    )


def commit_query(
    run,
    info,
    sel: Selection,
    strategy: str,
    fmt: str,
    reporter: Reporter,
    extra: dict | None = None,
    returned: list[str] = (),
):
    """Write the picks as the next round's query file, make them outstanding, commit, log: (record, path).

    ``returned``: outstanding ids that go back to the pool in the same commit. The caller holds the
    run lock.
    """
    if len(sel.ids) == 0:
        raise UserError(
            f"every pool row of run '{run.name}' is labeled or outstanding: ingest the outstanding labels or add rows to the pool"
        )
    if sel.note:
        reporter.info(sel.note)
    frame = query_frame(run, info, sel)
    new_round = run.round + 1
    outstanding = {**withdraw.remaining(run, returned), **{str(i): new_round for i in sel.ids}}
    payload = (
        (frame, fmt)
        if fmt != "labelstudio"
        else labelstudio.query_payload(run, frame, new_round, frame.columns[2])
    )
    run = rundir.commit(
        run,
        query=payload,
        state={"round": new_round, "outstanding": outstanding, **uniform_state(run, sel)},
    )
    entry = run.state["queries"][-1]
    path = run.path / entry["file"]
    record = {
        "command": "query",
        "round": new_round,
        "strategy": sel.strategy,
        "requested": strategy,
        "rows": len(sel.ids),
        "file": str(path.relative_to(run.path)),
        **({"labeling_config": entry["config"]} if "config" in entry else {}),
        **(extra or {}),
    }
    rundir.append_history(run, record)
    return record, path


def own_column(name: str, taken) -> str:
    """A name for a column alloop adds that no pool column has: ``rank``, else ``alloop_rank``, ``alloop_rank_2``, …"""
    if name not in taken:
        return name
    candidate, i = f"alloop_{name}", 2
    while candidate in taken:
        candidate, i = f"alloop_{name}_{i}", i + 1
    return candidate


def query_frame(run, info, sel: Selection) -> pd.DataFrame:
    """id, rank, score, the features as stored (kept while streaming; else read from the pool) and empty targets.

    The rank and score columns are renamed (``alloop_rank``, …) when the pool has columns of those names,
    so the user's values are never overwritten; ``ingest`` reads only the id and target columns.
    """
    config = config_of(run)
    id_col, features = config.pool.id_col, list(config.pool.features)
    rows = sel.rows.to_pandas() if sel.rows is not None else poolio.take_rows(info, sel.ids)
    taken = {id_col, *features, *run.targets}
    rank, score = (own_column(c, taken) for c in OWN_COLUMNS)
    frame = pd.DataFrame(
        {id_col: rows[id_col], rank: np.arange(1, len(sel.ids) + 1), score: sel.scores}
    )
    for c in features:
        frame[c] = rows[c].to_numpy()
    for t in run.targets:
        frame[t] = pd.Series(
            [None] * len(sel.ids), dtype=object if run.task == "classification" else "float64"
        )
    return frame
