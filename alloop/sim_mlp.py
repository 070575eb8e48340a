"""The MLP learner of ``alloop simulate``: SGDF training through the core, shaped so that XLA compiles once.

Every training pads the labeled rows to the label budget with weight 0. The core minimizes
mean_B(w L) + (s / n) R over the padded set, i.e. f(θ, s) / n_pad with f = Σ_labeled w_i L_i + s R: the
same θ*(s), hence the same θ̇, as the unpadded problem, while every array keeps one shape for the whole
simulation. Training is full-batch Adam with a cosine decay, the tangent carried by SGDF (``core.sgdf``),
from a fresh initialization each round.

Targets are standardized with the mean and spread of the repetition's initial labels (an MLP starting
at zero output cannot reach a target of 450 in a few thousand small steps). The gradient features
a(x) = ∂F(x)/∂θ and (JᵀWJ + sD)⁻¹ (the Gauss–Newton curvature over the labeled rows) stand in for the
linear model's features and inverse Hessian, so every strategy runs unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from alloop import strategies
from alloop.core import losses, models, objective, regularizers, scorers, sgdf

STEPS = 2000


class MLPLearner:
    def __init__(self, data, settings):
        spec = {"hidden": [32], "activation": "tanh", **settings.model}
        self.data, self.settings = data, settings
        mean, std = data.x_pool.mean(axis=0), data.x_pool.std(axis=0)
        self.model = models.make_model(spec, data.x_pool.shape[1], 1)
        stats = models.fit_standardizer(mean, std)
        self.z = (data.x_pool - mean) / np.asarray(stats.scale, np.float64)
        init = self.model.init(jax.random.PRNGKey(settings.seed))
        curvature, damping = objective.default_curvature("mlp")
        self.problem = objective.Problem(self.model, losses.squared, regularizers.l2_weights(init), stats, spec.get("curvature", curvature), damping)
        self.mask = np.asarray(ravel_pytree(models.weight_mask(init))[0], np.float64)
        self.n_pad = min(settings.budget, len(data.y_pool))
        cfg = sgdf.TrainConfig(optimizer="adam", lr=float(spec.get("lr", 1e-2)), epochs=int(spec.get("steps", STEPS)), batch_size=self.n_pad, seed=settings.seed)
        self.cfg = cfg
        self._train_tangent = self._compile(cfg)
        self._train_plain = self._compile(replace(cfg, tangent_every=0))
        self.x_pool = jnp.asarray(data.x_pool, jnp.float32)
        self.x_test = jnp.asarray(data.x_test, jnp.float32)
        self._outputs = jax.jit(lambda p, t, x: scorers.tangent_outputs(self.problem, p, t, x))
        self._predict = jax.jit(lambda p, x: self.model.apply(p, stats, x)[:, 0])
        self._jacobian = jax.jit(jax.vmap(lambda p, x: ravel_pytree(jax.grad(lambda q: self.model.apply(q, stats, x[None])[0, 0])(p))[0], (None, 0)))
        self._density = None
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
        params = self.model.init(jax.random.PRNGKey(seed))
        return train(params, self._padded(idx, w), jnp.float32(self.settings.s), jax.random.PRNGKey(seed + 1))

    def fit(self, labeled, w):
        if self._scale is None or len(labeled) == self.settings.initial:
            y0 = self.data.y_pool[labeled[: self.settings.initial]]
            self._scale = (float(np.mean(y0)), float(max(np.std(y0), 1e-8)))
        state = self._run(self._train_tangent, labeled, w, self.settings.seed)
        jl = np.asarray(self._jacobian(state.params, jnp.asarray(self.data.x_pool[labeled], jnp.float32)), np.float64)
        wl = np.ones(len(labeled)) if w is None else np.asarray(w, np.float64)
        hinv = np.linalg.inv((jl * wl[:, None]).T @ jl + float(self.settings.s) * np.diag(self.mask))
        return state.params, state.tangent, 0.5 * (hinv + hinv.T), labeled, w

    def test_rmse(self, fitted) -> float:
        pred = np.asarray(self._predict(fitted[0], self.x_test), np.float64) * self._scale[1] + self._scale[0]
        return float(np.sqrt(np.mean((pred - self.data.y_test) ** 2)))

    def density(self) -> np.ndarray:
        if self._density is None:
            self._density = strategies.rbf_density(self.z, np.random.default_rng(self.settings.seed))
        return self._density

    def view(self, fitted, labeled) -> strategies.PoolView:
        params, tangent, hinv, fit_rows, fit_w = fitted
        out, u = self._outputs(params, tangent, self.x_pool)
        m, sd = self._scale

        def members(k: int, rng: np.random.Generator) -> np.ndarray:
            preds = []
            for i in range(k):
                counts = np.bincount(rng.integers(0, len(fit_rows), len(fit_rows)), minlength=len(fit_rows)).astype(np.float64)
                st = self._run(self._train_plain, fit_rows, counts, self.settings.seed + 1000 + i)
                preds.append(np.asarray(self._predict(st.params, self.x_pool), np.float64) * sd + m)
            return np.stack(preds)

        a = np.asarray(self._jacobian(params, self.x_pool), np.float64)
        return strategies.PoolView(
            a, self.z, labeled, self.data.y_pool[labeled], np.asarray(out, np.float64)[:, 0] * sd + m,
            np.asarray(u, np.float64)[:, 0], hinv, members, self.density,
        )
