"""The grouped model (``init --group-col``, core/groups.py) as the simulation's learner.

Every round fits the grouped linear model to its minimum by full-batch float64 L-BFGS (what SGDF
converges to, at a fraction of the cost: a curve refits hundreds of times), with s chosen by k-fold
cross-validation over a log grid when it is ``auto`` (every (fold, s) pair in one vmapped call),
and hands the strategies the exact tangent there. Rows are padded with weight 0 to the budget, so
each pool compiles its fits once.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from alloop.config import PoolSpec, RunConfig
from alloop.core import groups, objective, sgdf
from alloop.errors import UserError
from alloop.sim.data import SimData
from alloop.strategies import TrainedModel
from alloop.training import fit as fitting
from alloop.training import grouping

S_GRID = np.logspace(-2, 3, 6)  # s = "auto": 5-fold CV over these
FOLDS = 5
MAX_ITER, GRAD_TOL = 500, 1e-7  # L-BFGS: iterations, and ‖∇(f/n)‖ at which it stops


def with_group_last(data: SimData, group_col: str) -> SimData:
    """The data with the group column as the last feature, as ``init --group-col`` orders them."""
    if group_col not in data.features:
        raise UserError(
            f"--group-col {group_col!r} is not a numeric column of the pool: "
            f"name one of {', '.join(data.features)}"
        )
    j = data.features.index(group_col)
    order = [i for i in range(len(data.features)) if i != j] + [j]
    for x in (data.x_pool, data.x_test):
        g = x[:, j]
        if not np.all(np.isfinite(g)) or np.any(g != np.round(g)):
            raise UserError(f"--group-col {group_col!r} must hold integers with no gaps")
    return dataclasses.replace(
        data,
        features=tuple(data.features[i] for i in order),
        x_pool=data.x_pool[:, order],
        x_test=data.x_test[:, order],
    )


def grouped_config(data: SimData, s=1.0) -> RunConfig:
    """The RunConfig ``alloop init --group-col`` writes for this pool (group column last)."""
    values = np.unique(np.r_[data.x_pool[:, -1], data.x_test[:, -1]]).astype(np.int64)
    mean, std = data.x_pool.mean(0), data.x_pool.std(0)
    mean[-1], std[-1] = 0.0, grouping.GROUP_SCALE
    spec = fitting.model_spec(
        "linear", groups={"column": data.features[-1], "values": [int(v) for v in values]}
    )
    pool = PoolSpec(
        data.pool or "", data.pool or "", data.id_col, data.features, "", len(data.y_pool)
    )
    return RunConfig(
        pool,
        {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        spec,
        "regression",
        ("target",),
        s=s,
        train=sgdf.TrainConfig().to_dict(),
    )


class Exact:
    """Float64 full-batch L-BFGS fits of the grouped model (vmapped over weightings and s) and the
    exact tangent at a fit: rows padded to ``rows`` with weight 0, so each compiles once."""

    def __init__(self, config: RunConfig, rows: int):
        self.config, self.rows = config, rows
        p0 = fitting.build_model(config).init(jax.random.PRNGKey(0))
        self.problem32 = fitting.build_problem(config, p0)
        with jax.enable_x64(True):
            cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
            self.problem = self.problem32._replace(stats=cast(self.problem32.stats))
            self.flat0, self.unravel = ravel_pytree(cast(p0))
            marker = jax.tree_util.tree_map(jnp.zeros_like, cast(p0))
            self.alpha_at = int(jnp.argmax(ravel_pytree({**marker, "alpha": 1.0})[0]))
        self._many = jax.jit(jax.vmap(self._solve, in_axes=(None, None, None, 0, 0)))
        self._tangent = jax.jit(self._exact_tangent)

    def _fun(self, flat, x, y, w, s):
        return objective.full_objective(
            self.problem, self.unravel(flat), s, objective.Data(x, y, w)
        )

    def _solve(self, flat0, x, y, w, s):
        fun = lambda f: self._fun(f, x, y, w, s)  # noqa: E731
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(fun)

        def body(c):
            f, st, it, _ = c
            v, g = vg(f, state=st)
            u, st = opt.update(g, st, f, value=v, grad=g, value_fn=fun)
            return optax.apply_updates(f, u), st, it + 1, jnp.linalg.norm(g)

        cond = lambda c: (c[2] < MAX_ITER) & (c[3] > GRAD_TOL)  # noqa: E731
        return jax.lax.while_loop(cond, body, (flat0, opt.init(flat0), 0, jnp.inf))[0]

    def _exact_tangent(self, flat, x, y, w, s):
        grad = jax.grad(self._fun)
        h = jax.hessian(self._fun)(flat, x, y, w, s)
        h = h.at[self.alpha_at, self.alpha_at].add(1.0)  # α: untrained, zero row (and ρ = 0)
        rho = jax.jvp(lambda t: grad(flat, x, y, w, t), (s,), (jnp.ones_like(s),))[1]
        return -jnp.linalg.solve(h, rho)

    def fit(self, x, y, weights: np.ndarray, s: np.ndarray, alpha: float) -> np.ndarray:
        """(m, p) optima for the rows of ``weights`` (m, n) at s (m,)."""
        with jax.enable_x64(True):
            start = ravel_pytree(groups.with_alpha(self.unravel(self.flat0), alpha))[0]
            start = jnp.asarray(start, jnp.float64)
            xs, ys, ws = pad(x, y, weights, self.rows)
            out = self._many(start, xs, ys, ws, jnp.asarray(s, jnp.float64))
            return np.asarray(out)

    def tangent(self, flat, x, y, s: float) -> np.ndarray:
        with jax.enable_x64(True):
            xs, ys, ws = pad(x, y, np.ones((1, len(x))), self.rows)
            return np.asarray(self._tangent(jnp.asarray(flat), xs, ys, ws[0], jnp.float64(s)))

    def tree(self, flat) -> dict:
        with jax.enable_x64(True):
            tree = self.unravel(jnp.asarray(flat, jnp.float64))
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def pad(x, y, weights, rows: int):
    """x, y and the weightings padded to ``rows`` rows of weight 0 and no group."""
    n = len(x)
    xs = np.zeros((rows, x.shape[1]))
    xs[:n] = x
    xs[n:, -1] = -1  # padding rows belong to no group (and weigh nothing)
    ys = np.zeros((rows, 1))
    ys[:n, 0] = y
    ws = np.zeros((len(weights), rows))
    ws[:, :n] = weights
    return jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ws)


def fold_weights(n: int, seed: int) -> np.ndarray:
    """(FOLDS, n) training weights of a k-fold split (1 on the training rows)."""
    fold = np.random.default_rng(seed).permutation(n) % FOLDS
    return np.stack([(fold != k).astype(float) for k in range(FOLDS)])


class GroupedFit(NamedTuple):
    """A round's fit: flat θ* and θ̇ (float64), its s, the targets' standardization, σ², the rows."""

    flat: np.ndarray
    tangent: np.ndarray
    s: float
    mean: float
    scale: float
    noise: float
    labeled: np.ndarray


class GroupedLearner:
    """The grouped model as the simulation's Learner (sim/learner.py); s = "auto": 5-fold CV over
    S_GRID every round, a number: that s."""

    def __init__(self, data: SimData, settings):
        self.data, self.settings = data, settings
        self.config = grouped_config(data, settings.s)
        self.exact = Exact(self.config, settings.budget)
        self.cv_loss = None

    def fit(self, labeled: np.ndarray, w: np.ndarray | None = None, seed: int = 0) -> GroupedFit:
        x, y_raw = self.data.x_pool[labeled], self.data.y_pool[labeled]
        mean, scale = float(y_raw.mean()), float(y_raw.std() or 1.0)
        y = (y_raw - mean) / scale
        base = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
        alpha = groups.residual_alpha(x[:, :-1], y)
        s = (
            self._choose_s(x, y, base, alpha, seed)
            if isinstance(self.config.s, str)
            else self.config.s
        )
        flat = self.exact.fit(x, y, base[None], np.array([s]), alpha)[0]
        tangent = self.exact.tangent(flat, x, y, s)
        noise = float(np.mean((self._predict(flat, x) - y) ** 2))
        return GroupedFit(flat, tangent, float(s), mean, scale, max(noise, 1e-12), labeled)

    def _choose_s(self, x, y, base, alpha, seed: int) -> float:
        """The grid's s with the least k-fold CV loss (every fold and s in one call)."""
        masks = fold_weights(len(x), seed)
        m = len(S_GRID)
        flats = self.exact.fit(x, y, np.repeat(masks * base, m, 0), np.tile(S_GRID, FOLDS), alpha)
        preds = np.stack([self._predict(f, x) for f in flats]).reshape(FOLDS, m, -1)
        held = (masks == 0)[:, None, :]
        err = np.sum(held * (preds - y) ** 2, axis=(0, 2)) / len(x)
        self.cv_loss = float(err.min())
        return float(S_GRID[int(np.argmin(err))])

    def _predict(self, flat, x) -> np.ndarray:
        params = self.exact.tree(flat)
        out = self.exact.problem32.model.apply(params, self.exact.problem32.stats, x)
        return np.asarray(out, np.float64)[:, 0]

    def predict(self, state: GroupedFit, x) -> np.ndarray:
        return self._predict(state.flat, x) * state.scale + state.mean

    def test_metric(self, state: GroupedFit) -> float:
        err = self.predict(state, self.data.x_test) - self.data.y_test
        return float(np.sqrt(np.mean(err**2)))

    def model(self, state: GroupedFit, seed: int) -> TrainedModel:
        return TrainedModel(
            problem=self.exact.problem32,
            params=self.exact.tree(state.flat),
            tangent=self.exact.tree(state.tangent),
            noise=np.array([state.noise], np.float32),
            s=state.s,
            target=([state.mean], [state.scale]),
        )
