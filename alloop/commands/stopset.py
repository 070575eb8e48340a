"""The stop set and the per-round stopping signals computed when a model is trained.

The stop set is a fixed uniform sample of the pool (``stopping.STOP_SET_ROWS`` rows, drawn once from the run's
seed, kept as stopset.parquet in the run directory: it is derived data, the same every time it is
drawn). Each training stores the model's predictions on it in the checkpoint's meta, and compares them
with those of the last model trained on fewer labels: the relative change (regression) or Cohen's kappa
(classification), with the mean SLD on the stop set and the CV loss of ``--s auto``. The history gets
the scalars, so that ``alloop status`` decides from files alone (``training.stopping``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from alloop.commands.common import config_of, inheritance
from alloop.errors import UserError
from alloop.io import atomic, rundir
from alloop.io import pool as poolio
from alloop.io.checkpoint import load_meta
from alloop.strategies import TrainedModel
from alloop.training import fit as fitting
from alloop.training import stopping

STOP_SET_FILE = "stopset.parquet"


class StopSet(NamedTuple):
    """The stop set's feature rows (float64), and the drawn rows (id and features) while not yet saved."""

    x: np.ndarray
    unsaved: pd.DataFrame | None


def draw(run: rundir.Run, info: poolio.PoolInfo) -> StopSet:
    """The stop set: the run directory's copy, or drawn from the pool when there is none (``keep`` saves it)."""
    config = config_of(run)
    features = list(config.pool.features)
    path = run.path / STOP_SET_FILE
    if path.exists():
        try:
            return StopSet(pd.read_parquet(path)[features].to_numpy(np.float64), None)
        except Exception:  # a damaged derived file is drawn again
            pass
    ids = poolio.scan_ids(info)
    frame = poolio.take_rows(info, ids[stopping.stop_rows(config.seed, len(ids))])[
        [info.id_col, *features]
    ]
    return StopSet(frame[features].to_numpy(np.float64), frame)


def keep(run: rundir.Run, stop: StopSet) -> None:
    """Save a drawn stop set in the run directory (once a training is committed: it is derived data)."""
    if stop.unsaved is not None:
        atomic.write_bytes_atomic(
            run.path / STOP_SET_FILE, atomic.encode_table(stop.unsaved, "parquet")
        )


def try_draw(run: rundir.Run, info: poolio.PoolInfo, reporter=None) -> StopSet | None:
    """``draw``, or None with a warning when the pool cannot be read (``--model auto`` then checks no candidate)."""
    try:
        return draw(run, info)
    except UserError as e:
        if reporter is not None:
            reporter.warn(
                f"the pool sample could not be read ({e}): every model is a candidate this round"
            )
        return None


def current_meta(run: rundir.Run) -> dict | None:
    """The meta of the run's current checkpoint, or None (none yet, or unreadable: the comparison is skipped)."""
    try:
        return load_meta(run.checkpoint_path) if run.checkpoint_path else None
    except Exception:
        return None


def stop_signals(
    run: rundir.Run,
    info: poolio.PoolInfo,
    config,
    result,
    choice,
    prev_meta: dict | None,
    reporter=None,
    stop: StopSet | None = None,
) -> tuple[dict | None, dict | None]:
    """(what the checkpoint's meta keeps, what the history record gets) about this training's stop set (``stop``:
    already drawn, else drawn now), which is saved; (None, None) with a warning when it cannot be read (the stopping rule then waits)."""
    try:
        stop = stop or draw(run, info)
    except UserError as e:
        if reporter is not None:
            reporter.warn(f"no stopping signal this round: {e}")
        return None, None
    keep(run, stop)
    x = stop.x
    pred = (
        stopping.stop_predictions(
            fitting.predict(config, result.params, x, result.target), len(x), run.task
        )
        .ravel()
        .tolist()
    )
    anchor = inheritance(run).get("anchor")
    model = TrainedModel(
        problem=fitting.build_problem(config, result.params, anchor),
        params=result.params,
        tangent=result.tangent,
        noise=np.asarray(result.noise, np.float32),
        s=config.s,
        target=result.target,
    )
    sld = model.on_rows(model.sld(), x)
    mean_sld = float(np.mean(sld)) if len(sld) and np.all(np.isfinite(sld)) else None
    base = _base(prev_meta, run.n_labels)
    change = kappa = None
    if base is not None and len(base["predictions"]) == len(pred):
        change, kappa = stopping.compare(base["predictions"], pred, run.task, len(x))
    cv = choice.cv_loss if choice is not None else None
    scalars = {
        "labels": run.n_labels,
        "change": change,
        "kappa": kappa,
        "mean_sld": mean_sld,
        "cv_loss": cv,
        "compared_with": None if base is None else base["labels"],
        "stop_rows": len(x),
    }
    meta = {
        "labels": run.n_labels,
        "predictions": pred,
        "base": base,
        **{k: scalars[k] for k in stopping.SIGNALS},
    }
    return meta, scalars


def _base(prev_meta: dict | None, n_labels: int) -> dict | None:
    """The stop-set predictions of the last model trained on fewer labels than now."""
    stop = (prev_meta or {}).get("stop")
    if not isinstance(stop, dict) or prev_meta.get("partial"):
        return None
    if stop.get("labels") is not None and stop["labels"] < n_labels:
        return {"labels": stop["labels"], "predictions": stop["predictions"]}
    return stop.get("base")
