"""What the use cases share: the run's typed config, its pool, labeled and test arrays, checkpoint and base model.

Every use case (one module per command) takes the run's lock, validates everything the user gave
before changing anything, and changes the run's state through one ``rundir.commit`` (or not at all),
so a user error (raised as ``UserError``) leaves every file of the run as it was.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from alloop.config import RunConfig
from alloop.core import compile_cache
from alloop.errors import UserError
from alloop.io import atomic, feature_cache, rundir, tables
from alloop.io import labels as labelio
from alloop.io import pool as poolio
from alloop.io.checkpoint import load_tree

# Compile once per machine: every command that uses JAX goes through here (core/compile_cache.py). JAX
# itself is imported only where it is used, so status, verify and ingest --no-train never start it.
compile_cache.enable()

TEST_FILE = "test.parquet"
BASE_FILE = "base.npz"


def now() -> str:
    """UTC time to the second, as every record of a run stores it."""
    return (
        datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def config_of(run: rundir.Run) -> RunConfig:
    """The run's typed configuration (config.json, with the class list as state.json has grown it)."""
    return RunConfig.from_json(run.config)


def open_pool_of(run: rundir.Run) -> poolio.PoolInfo:
    """The run's pool, found where init saw it (or beside the run when copied together), schema-checked."""
    p = config_of(run).pool
    if poolio.is_uri(p.path):  # object storage: no local place to look for it
        return poolio.open_recorded(
            p.path, p.id_col, list(p.features), list(p.targets_in_pool), p.fingerprint, run.name
        )
    places = [Path(p.path), run.path / (p.from_run or p.given), run.path / p.given]
    path = next((q for q in places if q.exists()), None)
    if path is None:
        raise UserError(
            f"the pool of run '{run.name}' is not at {p.path} any more: put it back, then retry"
        )
    return poolio.open_recorded(
        path, p.id_col, list(p.features), list(p.targets_in_pool), p.fingerprint, run.name
    )


def labeled_arrays(run: rundir.Run, info: poolio.PoolInfo, labels: pd.DataFrame | None = None):
    """(ids, X, Y) of the labeled rows: features from the pool, labels from the run."""
    labels = rundir.read_labels(run) if labels is None else labels
    ids = labels["id"].to_numpy()
    if len(ids) == 0:
        return ids, np.zeros((0, len(info.features)), np.float32), np.zeros((0, len(run.targets)))
    x = feature_cache.features(
        info, ids, compile_cache.cache_root()
    )  # unchanged pool: no pass over it
    if x is None:
        x = poolio.take_rows(info, ids)[list(info.features)].to_numpy(np.float32)
    return ids, x, labels[list(run.targets)].to_numpy()


def held_out_arrays(run: rundir.Run):
    """The run's held-out (X, Y), hash-checked like the labels; None without a test set."""
    test = run.config.get("test")
    if not test:
        return None
    path = run.path / TEST_FILE
    if not path.is_file() or atomic.sha256_file(path) != test["sha256"]:
        how = "missing" if not path.is_file() else "corrupt"
        raise UserError(
            f"test set {TEST_FILE} of run '{run.name}' is {how}: run `alloop verify {run.name}`"
        )
    df = tables.read_table(path)
    return df[list(config_of(run).pool.features)].to_numpy(np.float32), df[
        list(run.targets)
    ].to_numpy()


def load_checkpoint(run: rundir.Run):
    """(tree, meta) of the run's current checkpoint, or (None, None) before the first training."""
    from alloop.training import fit as fitting

    loaded = rundir.load_checkpoint(run, fitting.checkpoint_like(config_of(run)))
    return loaded if loaded is not None else (None, None)


def inheritance(run: rundir.Run) -> dict:
    """For a run made with ``init --base``: its base model (θ0, θ̇0, s0) and the base's target statistics."""
    base = run.config.get("base")
    if not base:
        return {}
    import jax

    from alloop.training import fit as fitting

    like = fitting.build_model(config_of(run)).init(jax.random.PRNGKey(0))
    tree = load_tree(run.path / BASE_FILE, {"theta0": like, "theta0_dot": like})
    return {
        "anchor": (tree["theta0"], tree["theta0_dot"], float(base["s"])),
        "target": base.get("target"),
    }


def label_frame(config: RunConfig, ids, values, round_) -> pd.DataFrame:
    """Labels as the run stores them: id, the targets, the query round each answers (a number for
    all, or one per label; 0 when no query asked the row) and the time it was ingested."""
    values = np.asarray(values)
    cols: dict = {"id": ids}
    if config.task == "classification":
        cols[config.targets[0]] = values.astype(object)
    else:
        values = values.reshape(len(ids), len(config.targets))
        for j, t in enumerate(config.targets):
            cols[t] = values[:, j].astype(np.float64)
    cols["round"] = np.broadcast_to(np.asarray(round_, np.int64), (len(ids),)).copy()
    cols["time"] = np.array([now()] * len(ids), dtype=object)
    return pd.DataFrame(cols)


def read_seed_labels(path: str, info: poolio.PoolInfo, config: RunConfig) -> pd.DataFrame:
    """``init --labels``: the file's filled rows, every id checked against the pool."""
    lf = labelio.read_label_file(
        path, info.id_col, tuple(config.targets), info.id_kind, config.task
    )
    keep = ~np.isin(lf.ids, lf.blank_ids) if len(lf.blank_ids) else np.ones(len(lf.ids), bool)
    poolio.require_ids(info, lf.ids[keep])
    return label_frame(config, lf.ids[keep], lf.values[keep], round_=0)


def last_s(run: rundir.Run, meta) -> float | None:
    """The s the latest completed training used (checkpoint, else history), to warm-start the search."""
    if meta and not meta.get("partial") and isinstance(meta.get("s"), (int, float)):
        return float(meta["s"])
    trained = [
        r["s"]
        for r in rundir.read_history(run)
        if r.get("command") == "train" and isinstance(r.get("s"), (int, float))
    ]
    return float(trained[-1]) if trained else None


def predict_rows(run: rundir.Run, x: np.ndarray) -> np.ndarray:
    """The current model's outputs on raw feature rows (regression in the target's units, else logits)."""
    from alloop.training import fit as fitting

    tree, meta = load_checkpoint(run)
    if tree is None:
        raise UserError(f"run '{run.name}' has no trained model yet: run `alloop train {run.name}`")
    return fitting.predict(config_of(run), tree["params"], x, meta.get("target"))


def history(name: str) -> list[dict]:
    return rundir.read_history(rundir.open_run(name))
