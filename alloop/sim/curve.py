"""One learning curve: the rounds of a repetition, each batch chosen by ``strategies.select`` over
the pool file (the call ``alloop query`` makes), answered from the pool's targets, the learner
refitted and the test metric and stopping signals recorded."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from alloop import strategies
from alloop.config import RunConfig
from alloop.sim.data import SimData
from alloop.sim.settings import SimSettings, initial_rows, round_seed, schedule, stop_rows
from alloop.strategies import research
from alloop.training import fit as fitting
from alloop.training import stopping


def round_of(
    learner, state, labeled: np.ndarray, seed: int, uniform: np.ndarray | None = None
) -> strategies.Round:
    """The round as a strategy sees it, from the learner's fit: what ``alloop query`` builds from a
    run. ``uniform``: which labeled rows were uniform draws (the initial labels, a mixed batch's
    share)."""
    return round_with(
        learner.data, learner.config, labeled, seed, learner.model(state, seed), uniform
    )


def round_with(
    data: SimData,
    config: RunConfig,
    labeled: np.ndarray,
    seed: int,
    model: strategies.TrainedModel | None,
    uniform: np.ndarray | None = None,
) -> strategies.Round:
    """A Round over the simulation's pool with a given model (the standardizer is the config's, as
    in a run)."""
    return strategies.Round(
        config.task,
        fitting.standardizer(config),
        data.x_pool[labeled].astype(np.float32),
        data.y_pool[labeled][:, None],
        seed,
        model,
        labeled_uniform=uniform,
    )


def run_curve(
    learner,
    settings: SimSettings,
    strategy: str,
    rep: int,
    on_round: Callable[[], None] | None = None,
) -> list[dict]:
    """One learning curve: the test metric after every batch, from the repetition's initial labels.

    Every batch is chosen by ``strategies.select`` over the pool file, the call ``alloop query``
    makes. Each round also records the stopping signals a run's training records
    (``commands/stopset.py``): the change (regression) or kappa (classification) of the predictions
    on a fixed stop set against the last round's, the CV loss of an s search, and the mean SLD on
    the stop set.
    """
    data = learner.data
    strat = strategies.get(strategy)
    n_pool = len(data.y_pool)
    info = data.open_pool()
    labeled = initial_rows(settings, rep, n_pool)
    probs = 1.0 / (n_pool - np.arange(len(labeled)))  # the initial draw was uniform
    uniform = np.ones(len(labeled), bool)
    x_stop = data.x_pool[stop_rows(settings, n_pool)]
    rows, state, prev = [], None, None
    for r, target in enumerate(schedule(settings, n_pool)):
        t0 = time.perf_counter()
        if state is not None:
            rnd = round_of(learner, state, labeled, round_seed(settings, rep, r), uniform)
            sel = strategies.select(strat, info, rnd, data.ids[labeled], target - len(labeled))
            picked = data.rows_of(sel.ids)
            labeled = np.concatenate([labeled, picked])
            probs = np.concatenate([probs, sel.prob])
            uniform = np.concatenate(
                [uniform, sel.uniform if sel.uniform is not None else np.zeros(len(picked), bool)]
            )
        w = research.lure_weights(probs, n_pool) if strat.weighted else None
        state = learner.fit(labeled, w)
        metric = learner.test_metric(state)
        sig, prev = stop_signal(learner, state, x_stop, prev, round_seed(settings, rep, r))
        rows.append(
            {
                "strategy": strategy,
                "rep": rep,
                "n_labels": len(labeled),
                "metric": metric,
                "seconds": time.perf_counter() - t0,
                **sig,
            }
        )
        if on_round is not None:
            on_round()
    return rows


def stop_signal(learner, state, x_stop: np.ndarray, prev, seed: int) -> tuple[dict, np.ndarray]:
    """({change, kappa, cv_loss, mean_sld}, this round's stop-set predictions) for a fitted
    learner."""
    model, task = learner.model(state, seed), learner.config.task
    pred = stopping.stop_predictions(
        fitting.predict(learner.config, model.params, x_stop.astype(np.float32), model.target),
        len(x_stop),
        task,
    )
    change, kappa = (
        stopping.compare(prev, pred, task, len(x_stop)) if prev is not None else (None, None)
    )
    sld = model.on_rows(model.sld(), x_stop)
    mean_sld = float(np.mean(sld)) if len(sld) and np.all(np.isfinite(sld)) else None
    return {
        "change": change,
        "kappa": kappa,
        "cv_loss": learner.cv_loss,
        "mean_sld": mean_sld,
    }, pred
