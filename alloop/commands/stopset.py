"""The stop set and the per-round stopping signals computed when a model is trained.

The stop set is a fixed uniform sample of the pool (``stopping.STOP_SET_ROWS`` rows, drawn once from the run's
seed, kept as stopset.parquet in the run directory: it is derived data, the same every time it is
drawn). Each training stores the model's predictions on it in the checkpoint's meta, and compares them
with those of the last model trained on fewer labels: the relative change (regression) or Cohen's kappa
(classification), with the mean SLD on the stop set and the CV loss of ``--s auto``. The history gets
the scalars, so that ``alloop status`` decides from files alone (``training.stopping``).
"""

from __future__ import annotations

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


def stop_set(run: rundir.Run, info: poolio.PoolInfo, save: bool = True, reporter=None) -> np.ndarray | None:
    """The stop set's feature rows (float64), drawn and saved on first use. ``save=False`` (before a training
    is committed) reads without writing, and gives None with a warning when the pool cannot be read."""
    config = config_of(run)
    path = run.path / STOP_SET_FILE
    if path.exists():
        try:
            frame = pd.read_parquet(path)
            return frame[list(config.pool.features)].to_numpy(np.float64)
        except Exception:  # a damaged derived file is drawn again
            pass
    try:
        ids = poolio.scan_ids(info)
        frame = poolio.take_rows(info, ids[stopping.stop_rows(config.seed, len(ids))])
    except UserError as e:
        if save:
            raise
        if reporter is not None:
            reporter.warn(f"the pool sample could not be read ({e}): every model is a candidate this round")
        return None
    frame = frame[[info.id_col, *config.pool.features]]
    if save:
        atomic.write_bytes_atomic(path, atomic.encode_table(frame, "parquet"))
    return frame[list(config.pool.features)].to_numpy(np.float64)


def current_meta(run: rundir.Run) -> dict | None:
    """The meta of the run's current checkpoint, or None (none yet, or unreadable: the comparison is skipped)."""
    try:
        return load_meta(run.checkpoint_path) if run.checkpoint_path else None
    except Exception:
        return None


def stop_signals(run: rundir.Run, info: poolio.PoolInfo, config, result, choice, prev_meta: dict | None, reporter=None) -> tuple[dict | None, dict | None]:
    """(what the checkpoint's meta keeps, what the history record gets) about this training's stop set;
    (None, None) with a warning when the stop set cannot be read (the stopping rule then waits)."""
    try:
        x = stop_set(run, info)
    except UserError as e:
        if reporter is not None:
            reporter.warn(f"no stopping signal this round: {e}")
        return None, None
    pred = stopping.stop_predictions(fitting.predict(config, result.params, x, result.target), len(x), run.task).ravel().tolist()
    anchor = inheritance(run).get("anchor")
    model = TrainedModel(fitting.build_problem(config, result.params, anchor), result.params, result.tangent,
                         np.asarray(result.noise, np.float32), config.s, result.target)
    sld = model.on_rows(model.sld(), x)
    mean_sld = float(np.mean(sld)) if len(sld) and np.all(np.isfinite(sld)) else None
    base = _base(prev_meta, run.n_labels)
    change = kappa = None
    if base is not None and len(base["predictions"]) == len(pred):
        change, kappa = stopping.compare(base["predictions"], pred, run.task, len(x))
    cv = choice.cv_loss if choice is not None else None
    scalars = {"labels": run.n_labels, "change": change, "kappa": kappa, "mean_sld": mean_sld, "cv_loss": cv,
               "compared_with": None if base is None else base["labels"], "stop_rows": len(x)}
    meta = {"labels": run.n_labels, "predictions": pred, "base": base, **{k: scalars[k] for k in stopping.SIGNALS}}
    return meta, scalars


def _base(prev_meta: dict | None, n_labels: int) -> dict | None:
    """The stop-set predictions of the last model trained on fewer labels than now."""
    stop = (prev_meta or {}).get("stop")
    if not isinstance(stop, dict) or prev_meta.get("partial"):
        return None
    if stop.get("labels") is not None and stop["labels"] < n_labels:
        return {"labels": stop["labels"], "predictions": stop["predictions"]}
    return stop.get("base")
