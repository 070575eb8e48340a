"""``alloop train``: fit the model with SGDF on every label so far, choose s where asked, checkpoint θ and θ̇."""

from __future__ import annotations

import numpy as np

from alloop.commands import stopset
from alloop.commands.common import (
    config_of,
    held_out_arrays,
    inheritance,
    labeled_arrays,
    last_s,
    load_checkpoint,
    open_pool_of,
)
from alloop.config import RunConfig, parse_s
from alloop.core import sgdf
from alloop.errors import UserError
from alloop.io import atomic, checkpoint, rundir
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.strategies.stream import check_devices
from alloop.training import choose_model, choose_s, grouping
from alloop.training import fit as fitting


def train(
    name: str,
    *,
    fresh: bool = False,
    epochs: int | None = None,
    s: float | str | None = None,
    folds: int | None = None,
    devices: int = 1,
    wait: float = 5.0,
    reporter: Reporter | None = None,
) -> dict:
    """Fit the model with SGDF on all labels so far (warm-started from the last checkpoint).

    ``s`` (a number, "auto" or "loocv") and ``folds`` override the run's choice of s for this training.
    ``devices``: split every minibatch over that many local devices (data-parallel training).
    """
    reporter = reporter or Reporter()
    check_devices(devices)
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        _, record = train_locked(
            run,
            open_pool_of(run),
            reporter,
            fresh=fresh,
            epochs=epochs,
            s=s,
            folds=folds,
            devices=devices,
        )
    return record


def train_locked(
    run,
    info,
    reporter: Reporter,
    fresh: bool = False,
    epochs: int | None = None,
    labels=None,
    s=None,
    folds=None,
    devices: int = 1,
):
    """Train and commit the checkpoint; the caller holds the run's lock. Returns (run, history record)."""
    if run.n_labels == 0:
        raise UserError(
            f"run '{run.name}' has no labels yet: `alloop query {run.name}` picks rows to label, "
            f"then `alloop ingest {run.name} FILE` (or init with --labels)"
        )
    if epochs is not None and epochs < 1:
        raise UserError("--epochs must be at least 1")
    _, x, y = labeled_arrays(run, info, labels)
    prev_meta = stopset.current_meta(run)  # the stop-set predictions of the model being replaced
    test = held_out_arrays(
        run
    )  # before training: a damaged test set is refused before anything is committed
    tree, meta = (
        (None, None) if fresh else load_checkpoint(run)
    )  # --fresh also recovers from a lost checkpoint
    progress = run.state.get("training")
    resume = None
    if (
        progress
        and tree is not None
        and progress["n_labels"] == run.n_labels
        and progress.get("epochs") == epochs
        and not fresh
    ):
        resume = (fitting.state_from_tree(tree), int(progress["epochs_done"]))
        reporter.info(f"resuming the interrupted training at epoch {resume[1]}")
    params = tangent = None
    if tree is not None and not fresh and resume is None:
        params, tangent = tree["params"], tree["tangent"]
    stop = (
        stopset.try_draw(run, info, reporter) if config_of(run).model.is_auto else None
    )  # auto checks its candidates on it
    config, choice, picked = training_s(
        run,
        x,
        y,
        meta,
        progress if resume else None,
        params,
        tangent,
        s,
        folds,
        reporter,
        has_model=tree is not None,
        x_pool=None if stop is None else stop.x,
    )
    if (
        picked is not None and picked.switched
    ):  # another model class: its parameters start from zero
        params = tangent = None
    model_state = {"model": config.model.concrete().to_json()} if config.model.is_auto else {}
    if devices > 1 and config.trainer != "sgdf":
        reporter.info(
            f"--devices applies to SGDF: the {config.trainer} trainer runs full-batch on one device"
        )
    total = fitting.train_config(config, len(x), epochs=epochs).epochs
    box = {"run": run}

    def save_progress(state, done: int) -> None:
        """Commit the training state every few epochs, so that a killed training resumes."""
        part = fitting.checkpoint_tree(state, state.params, state.tangent)
        info_ = {"n_labels": run.n_labels, "epochs_done": done, "epochs": epochs, "s": config.s}
        box["run"] = rundir.commit(
            box["run"],
            checkpoint=(part, {"partial": True, **info_}),
            state={"training": info_, "labels_at_checkpoint": None, **model_state},
        )

    with reporter.progress(f"training on {len(x)} labels", total) as advance:
        if resume is not None:
            advance(resume[1])
        result = fitting.fit(
            config,
            x,
            y,
            params=params,
            tangent=tangent,
            epochs=epochs,
            resume=resume,
            on_epoch=lambda e, t, loss: advance(1),
            on_checkpoint=save_progress,
            devices=devices,
            **inheritance(run),
        )
    run = box["run"]
    for w in result.warnings:
        reporter.warn(w)
    figures = {
        "train_loss": result.train_loss,
        "residual": result.residual,
        "epochs": result.epochs,
    }
    if test is not None:
        figures.update(fitting.metrics(config, result.params, *test, target=result.target))
    meta = {
        "s": config.s,
        "s_choice": choice.record() if choice else None,
        "n_labels": run.n_labels,
        "round": run.round,
        "noise": [float(v) for v in np.ravel(result.noise)],
        "warnings": result.warnings,
        "figures": figures,
        "tangent_norm": sgdf.tree_norm(result.tangent),
        "target": result.target,
        "classes": run.config.get("classes"),
    }
    if picked is not None:
        meta["model_choice"] = picked.record()
    if grouping.spec_of(config):
        meta["groups"] = grouping.summary(config, result.params, result.tangent, x)
    stop_meta, stop_record = stopset.stop_signals(
        run, info, config, result, choice, prev_meta, reporter, stop
    )
    meta["stop"] = stop_meta
    tree = fitting.checkpoint_tree(result.state, result.params, result.tangent)
    run = rundir.commit(
        run,
        checkpoint=(tree, atomic.to_json_value(meta)),
        state={"labels_at_checkpoint": run.n_labels, "training": None, **model_state},
    )
    if picked is not None:
        keep_grid_warm(run, picked.grid_state)
    record = {
        "command": "train",
        "labels": run.n_labels,
        "round": run.round,
        "s": config.s,
        **figures,
        "seconds": round(result.seconds, 3),
        "warnings": result.warnings,
    }
    if picked is not None:
        record["model_choice"] = picked.record()
    if stop_record:
        record["stop"] = stop_record
    if choice:
        record["s_choice"] = {**choice.record(), "seconds": round(choice.seconds, 3)}
    rundir.append_history(run, record)
    return run, record


def training_s(
    run,
    x,
    y,
    meta,
    progress,
    params,
    tangent,
    s,
    folds,
    reporter: Reporter,
    has_model: bool = False,
    x_pool=None,
) -> tuple[RunConfig, choose_s.Choice | None, choose_model.ModelChoice | None]:
    """The run's config with the numeric s (and, for ``--model auto``, the model) to train with now, how s was
    chosen (None for a given number) and how the model was (None unless it was chosen now).

    A resumed training keeps the s and model it started with; otherwise "auto" starts from the last s used.
    ``x_pool``: the run's stop set, on which ``--model auto`` checks its candidates (``choose_model``).
    """
    config = config_of(run)
    if s is not None:
        config = config.replace(s=parse_s(s))
    if folds is not None:
        if folds < 2:
            raise UserError("--folds must be at least 2")
        config = config.replace(tune={**(config.tune or {}), "folds": int(folds)})
    if progress and isinstance(progress.get("s"), (int, float)):
        return config.with_s(progress["s"]), None, None
    if not choose_s.is_mode(config.s):
        if config.model.is_auto:
            reporter.info(
                f"--model auto keeps {config.model.label()}: choosing the model needs s chosen by cross-validation (--s auto)"
            )
        return config.with_s(config.s), None, None
    if config.model.is_auto:
        with reporter.progress(f"choosing the model and s ({config.s}) on {len(x)} labels", None):
            picked = choose_model.choose(
                config,
                x,
                y,
                current=config.model if has_model else None,
                s_prev=last_s(run, meta),
                x_pool=x_pool,
                warm=grid_warm(run, config),
            )
        reporter.info(f"model: {picked.reason}; s = {picked.s:.4g}")
        return (
            config.replace(model=picked.model.auto_marked()).with_s(picked.s),
            picked.s_choice,
            picked,
        )
    with reporter.progress(f"choosing s ({config.s}) on {len(x)} labels", None):
        value, choice = choose_s.resolve_s(
            config, x, y, s_prev=last_s(run, meta), params=params, tangent=tangent
        )
    reporter.info(
        f"s = {value:.4g} ({choice.mode}: {choice.folds}-fold CV loss {choice.cv_loss:.4g}, {len(choice.evaluations)} evaluations)"
    )
    if choice.stop == "bound":
        reporter.warn(
            f"the CV loss was still falling at the end of the search range (s = {choice.evaluations[-1].s:.3g}): these labels do not pin s down "
            "(`alloop tune-s` shows the curve; give a number with --s to fix it)"
        )
    return config.with_s(value), choice, None


# --- the MLP grid's warm start between trainings (a cache: losing it costs time, never a result) ------

GRID_WARM_FILE = "grid-warm.npz"


def grid_warm(run: rundir.Run, config: RunConfig) -> choose_s.GridWarm | None:
    """The last ``--model auto`` choice's MLP grid trainings, where this one's grid search starts
    (``choose_s.choose_grid``); None when there are none or they cannot be read. The search itself
    checks that they were trained on this run's first labels (``GridWarm.fits``)."""
    path = run.path / GRID_WARM_FILE
    if not path.is_file():
        return None
    try:
        meta = checkpoint.load_meta(path)
        mlp = next(spec for spec in choose_model.candidates() if spec.kind == "mlp")
        like = choose_s.grid_state_like(config.replace(model=mlp), int(meta["folds"]))
        return choose_s.grid_state_from(checkpoint.load_tree(path, like), meta)
    except (UserError, OSError, KeyError, ValueError, TypeError):
        return None


def keep_grid_warm(run: rundir.Run, state: choose_s.GridWarm | None) -> None:
    """Keep the MLP grid's trainings for the next training's search (or drop a stale file)."""
    path = run.path / GRID_WARM_FILE
    try:
        if state is None:
            path.unlink(missing_ok=True)
        else:
            checkpoint.save_tree(path, *choose_s.grid_state_record(state))
    except OSError:
        pass
