"""The MLP learner of ``alloop simulate``: SGDF training through the core, shaped so that XLA compiles once.

Every training pads the labeled rows to the label budget with weight 0. The core minimizes
mean_B(w L) + (s / n) R over the padded set, i.e. f(θ, s) / n_pad with f = Σ_labeled w_i L_i + s R: the
same θ*(s), hence the same θ̇, as the unpadded problem, while every array keeps one shape for the whole
simulation. Training is full-batch Adam with a cosine decay, the tangent carried by SGDF (``core.sgdf``),
from a fresh initialization each round.

Targets are standardized with the mean and spread of the repetition's initial labels (an MLP starting
at zero output cannot reach a target of 450 in a few thousand small steps). ``model`` hands the fit
to the strategies as a ``TrainedModel``, as a live run's checkpoint does, so every strategy runs unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from alloop.core import losses, models, objective, regularizers, scorers, sgdf
from alloop.strategies import TrainedModel
from alloop.strategies.builtin import COMMITTEE_SIZE

STEPS = 2000


class MLPLearner:
    def __init__(self, data, settings):
        spec = {"hidden": [32], "activation": "tanh", **settings.model}
        self.data, self.settings = data, settings
        mean, std = data.x_pool.mean(axis=0), data.x_pool.std(axis=0)
        self.net = models.make_model(spec, data.x_pool.shape[1], 1)
        stats = models.fit_standardizer(mean, std)
        init = self.net.init(jax.random.PRNGKey(settings.seed))
        curvature, damping = objective.default_curvature("mlp")
        self.problem = objective.Problem(self.net, losses.squared, regularizers.l2_weights(init), stats, spec.get("curvature", curvature), damping)
        self.n_pad = min(settings.budget, len(data.y_pool))
        cfg = sgdf.TrainConfig(optimizer="adam", lr=float(spec.get("lr", 1e-2)), epochs=int(spec.get("steps", STEPS)), batch_size=self.n_pad,
                               seed=settings.seed)
        self.cfg = cfg
        self._train_tangent = self._compile(cfg)
        self._train_plain = self._compile(replace(cfg, tangent_every=0))
        self.x_pool = jnp.asarray(data.x_pool, jnp.float32)
        self.x_test = jnp.asarray(data.x_test, jnp.float32)
        self._predict = jax.jit(lambda p, x: self.net.apply(p, stats, x)[:, 0])
        self._scale = None

    def _compile(self, cfg):
        opt = sgdf.make_optimizer(cfg, cfg.epochs * sgdf.steps_per_epoch(self.n_pad, cfg.batch_size))
        epoch = sgdf.make_epoch(self.problem, opt, self.n_pad, cfg)

        @jax.jit
        def train(params, data, s, key):
            state = sgdf.init_state(params, opt)
            return jax.lax.fori_loop(0, cfg.epochs, lambda e, st: epoch(st, data, s, jax.random.fold_in(key, e))[0], state)

        return train

    def _padded(self, idx, w):
        n = len(idx)
        rows = np.r_[idx, np.full(self.n_pad - n, idx[0])]
        y = (self.data.y_pool[rows] - self._scale[0]) / self._scale[1]
        weights = np.r_[np.ones(n) if w is None else w, np.zeros(self.n_pad - n)]
        return objective.make_data(self.data.x_pool[rows], y[:, None], weights)

    def _run(self, train, idx, w, seed):
        params = self.net.init(jax.random.PRNGKey(seed))
        return train(params, self._padded(idx, w), jnp.float32(self.settings.s), jax.random.PRNGKey(seed + 1))

    def fit(self, labeled, w):
        if self._scale is None or len(labeled) == self.settings.initial:
            y0 = self.data.y_pool[labeled[: self.settings.initial]]
            self._scale = (float(np.mean(y0)), float(max(np.std(y0), 1e-8)))
        state = self._run(self._train_tangent, labeled, w, self.settings.seed)
        return state.params, state.tangent, labeled, w

    def test_rmse(self, fitted) -> float:
        pred = np.asarray(self._predict(fitted[0], self.x_test), np.float64) * self._scale[1] + self._scale[0]
        return float(np.sqrt(np.mean((pred - self.data.y_test) ** 2)))

    def model(self, fitted, seed: int) -> TrainedModel:
        params, tangent, fit_rows, fit_w = fitted
        m, sd = self._scale

        def members() -> list:
            rng = np.random.default_rng(seed)
            out = []
            for i in range(COMMITTEE_SIZE):
                counts = np.bincount(rng.integers(0, len(fit_rows), len(fit_rows)), minlength=len(fit_rows)).astype(np.float64)
                out.append(self._run(self._train_plain, fit_rows, counts, self.settings.seed + 1000 + i).params)
            return out

        y = ((self.data.y_pool[fit_rows] - m) / sd)[:, None]
        noise = scorers.residual_noise(self.problem, params, self.data.x_pool[fit_rows], y)
        return TrainedModel(self.problem, params, tangent, noise, float(self.settings.s), ([m], [sd]), members)
