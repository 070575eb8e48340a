"""``alloop tune-s``: the validation error over a log grid of s, and the s that ``--s auto`` would choose now."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alloop.commands.common import config_of, labeled_arrays, last_s, load_checkpoint, open_pool_of
from alloop.errors import UserError
from alloop.io import atomic, rundir
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.training import choose_s
from alloop.training import validation_curve as curves


def tune_s(
    name: str,
    *,
    plot: bool = False,
    out: str | None = None,
    s_min: float = 1e-3,
    s_max: float = 1e4,
    per_decade: int = 6,
    folds: int | None = None,
    wait: float = 5.0,
    reporter: Reporter | None = None,
) -> dict:
    """The validation error over a log grid of s (the paper's Figure 2) and the s that auto would choose now.

    Changes no model: it appends a "tune-s" record to the history and, with ``plot``, writes a PNG to
    ``out`` (default: plots/tune-s-round-NNNN.png in the run directory).
    """
    reporter = reporter or Reporter()
    if not (0 < s_min < s_max) or per_decade < 1:
        raise UserError(
            "--s-min and --s-max must be positive with --s-min < --s-max, and --per-decade at least 1"
        )
    if folds is not None and folds < 2:
        raise UserError("--folds must be at least 2")
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        if run.n_labels < 2:
            raise UserError(
                f"run '{run.name}' has {run.n_labels} label(s): tune-s needs at least 2"
            )
        info = open_pool_of(run)
        _, x, y = labeled_arrays(run, info)
        tree, meta = load_checkpoint(run)
        config = config_of(run)
        if folds is not None:
            config = config.replace(tune={**(config.tune or {}), "folds": int(folds)})
        mode = "loocv" if config.s == "loocv" else "auto"
        grid = choose_s.log_grid(s_min, s_max, per_decade)
        with reporter.progress(f"validation error at {len(grid)} values of s", None):
            curve = curves.validation_curve(
                config,
                x,
                y,
                grid,
                s_prev=last_s(run, meta),
                mode=mode,
                params=None if tree is None else tree["params"],
                tangent=None if tree is None else tree["tangent"],
            )
        if plot:
            out = Path(out) if out else run.path / "plots" / f"tune-s-round-{run.round:04d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            title = f"{run.name}: {curve.cv_label} on {run.n_labels} labels (round {run.round})"
            atomic.write_bytes_atomic(out, curves.plot_png(curve, title))
        best = int(np.argmin(curve.cv))
        record = {
            "command": "tune-s",
            "round": run.round,
            "labels": run.n_labels,
            "s": curve.choice.s,
            "mode": mode,
            "cv_loss": curve.choice.cv_loss,
            "grid_best_s": float(grid[best]),
            "grid_best_cv": float(curve.cv[best]),
            "local_minima": curve.local_minima(),
            "s_model": (meta or {}).get("s"),
            "plot": str(out) if plot else None,
        }
        rundir.append_history(run, record)
    return {**record, "curve": curve.to_dict()}
