"""The simulation's learner for every run that is not linear regression: SGDF through the core, as
``alloop train`` trains.

The model, loss, regularizer, curvature and optimizer come from the RunConfig that ``alloop init``
would write for these options (``config_for``), and every round warm-starts from the previous
round's θ and θ̇ as ``alloop train`` does. One difference, for speed: training is full-batch over
the labeled rows padded with weight-0 rows to the label budget, so XLA compiles one training for the
whole simulation. The core minimizes mean(w L) + (s / n) R over the padded set, i.e. f(θ, s) / n_pad
with f = Σ_labeled L_i + s R: the same θ*(s), hence the same θ̇, as the unpadded problem that
``alloop train`` solves by minibatches.

Regression targets are standardized with the current labels' mean and spread (``fit.target_stats``),
as in a run. ``model`` hands the fit to the strategies as a ``TrainedModel``, as a run's checkpoint
does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alloop.config import RunConfig
from alloop.core import objective, scorers, sgdf
from alloop.strategies import TrainedModel
from alloop.strategies.builtin import COMMITTEE_SIZE
from alloop.training import fit as fitting

STEPS = 2000  # full-batch steps per round (fit.MIN_STEPS: what a run takes at least)


class SGDFFit(NamedTuple):
    """A round's fit: θ and θ̇, the labeled pool rows and their weights, the target statistics."""

    params: Any
    tangent: Any
    labeled: np.ndarray
    weights: np.ndarray | None
    target: tuple | None


class SGDFLearner:
    """``data``/``settings``: ``SimData``/``SimSettings``; ``config``: the run's RunConfig (numeric
    s)."""

    cv_loss = None  # s is fixed: no search, no CV evidence

    def __init__(self, data, settings, config: RunConfig):
        self.data, self.settings, self.config = data, settings, config
        self.task = config.task
        self.n_pad = min(settings.budget, len(data.y_pool))
        steps = int(settings.model.get("steps", STEPS))
        cfg = fitting.train_config(config, self.n_pad, epochs=steps)
        self.cfg = dataclasses.replace(cfg, epochs=steps, batch_size=self.n_pad)
        init = fitting.build_model(config).init(jax.random.PRNGKey(config.seed))
        self.init = init
        self.problem = fitting.build_problem(config, init)
        self._train_tangent = self._compile(self.cfg)
        self._train_plain = self._compile(dataclasses.replace(self.cfg, tangent_every=0))
        self._prev = None  # (params, tangent) of the last fit: the next round warm-starts there
        self._apply = fitting.apply_fn(config)

    def _compile(self, cfg):
        opt = sgdf.make_optimizer(
            cfg, cfg.epochs * sgdf.steps_per_epoch(self.n_pad, cfg.batch_size)
        )
        epoch = sgdf.make_epoch(self.problem, opt, self.n_pad, cfg)

        @jax.jit
        def train(params, tangent, data, s, key):
            state = sgdf.init_state(params, opt, tangent)
            return jax.lax.fori_loop(
                0,
                cfg.epochs,
                lambda e, st: epoch(st, data, s, jax.random.fold_in(key, e))[0],
                state,
            )

        return train

    def _targets(self, rows):
        y = self.data.y_pool[rows]
        stats = fitting.target_stats(self.config, y)
        return fitting.make_targets(self.config, y, stats), stats

    def _padded(self, rows, weights):
        y, stats = self._targets(rows)
        pad = self.n_pad - len(rows)
        x = np.concatenate(
            [self.data.x_pool[rows], np.repeat(self.data.x_pool[rows[:1]], pad, axis=0)]
        )
        y = np.concatenate([y, np.repeat(y[:1], pad, axis=0)])
        w = np.r_[np.ones(len(rows)) if weights is None else weights, np.zeros(pad)]
        return objective.make_data(x.astype(np.float32), y, w), stats

    def forget(self) -> None:
        """The next fit starts from the initial parameters (a run's training after a switch of
        model)."""
        self._prev = None

    def fit(self, labeled: np.ndarray, w: np.ndarray | None):
        data, stats = self._padded(labeled, w)
        params, tangent = (
            self._prev
            if self._prev is not None and len(labeled) > self.settings.initial
            else (self.init, None)
        )
        tangent = jax.tree_util.tree_map(jnp.zeros_like, params) if tangent is None else tangent
        state = self._train_tangent(
            params,
            tangent,
            data,
            jnp.float32(self.config.s),
            jax.random.PRNGKey(self.config.seed + len(labeled)),
        )
        self._prev = (state.params, state.tangent)
        return SGDFFit(state.params, state.tangent, labeled, w, stats)

    def test_metric(self, fitted) -> float:
        """Test RMSE (regression, in the target's units) or test error rate (classification)."""
        m = fitting.metrics(
            self.config, fitted.params, self.data.x_test, self.data.y_test, target=fitted.target
        )
        return m["test_rmse"] if self.task == "regression" else 1.0 - m["test_accuracy"]

    def model(self, fitted, seed: int) -> TrainedModel:
        params, rows = fitted.params, fitted.labeled

        def members() -> list:
            rng = np.random.default_rng(seed)
            out = []
            for i in range(COMMITTEE_SIZE):
                counts = np.bincount(
                    rng.integers(0, len(rows), len(rows)), minlength=len(rows)
                ).astype(np.float64)
                data, _ = self._padded(rows, counts)
                key = jax.random.PRNGKey(seed + 1000 + i)
                out.append(
                    self._train_plain(
                        self.init,
                        jax.tree_util.tree_map(jnp.zeros_like, self.init),
                        data,
                        jnp.float32(self.config.s),
                        key,
                    ).params
                )
            return out

        y, _ = self._targets(rows)
        x = self.data.x_pool[rows].astype(np.float32)
        noise = scorers.residual_noise(self.problem, params, x, y, apply=self._apply)
        return TrainedModel(
            problem=self.problem,
            params=params,
            tangent=fitted.tangent,
            noise=noise,
            s=float(self.config.s),
            target=fitted.target,
            members=members,
        )
