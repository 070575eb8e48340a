"""How a run's labeled arrays are cross-validated for choosing s: one ``Evaluator`` protocol, a
route per model family, and the compiled functions each route needs, owned by one cache.

- ``exact`` (linear and poly models, squared loss): ``ExactCV``, the closed forms of
  ``core.linear_cv`` in numpy float64 over the model's linear form. The linear form is taken by
  autodiff through the model (so the run's standardizer is inside it exactly as in training), in
  chunks of a fixed number of rows: one compilation per model, whatever the label count.
- ``sgdf`` (other models): ``SGDFCV``, SGDF fold trainings carried along s, all folds at once.
- ``grid`` (the MLP in ``--model auto``) chooses by its own trainings (``choose_s.choose_grid``);
  its compiled trainer and held-out losses are built here, once per model and padded size.

``COMPILED`` maps what defines a problem (model, regularizer, task, classes, standardizer, seed) to
its ``Compiled`` entry: the problem, its initial parameters and its jitted functions. XLA compiles
each once per process; rebuilding them per search made every call compile anew.
"""

from __future__ import annotations

import json
import math
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from alloop.config import RunConfig, as_config
from alloop.core import hyper, linear_cv, objective, sgdf
from alloop.core.objective import Data
from alloop.errors import UserError
from alloop.training import fit as fitting

ROUTES = ("exact", "sgdf", "grid")
CHUNK = 256  # rows per call of a linear form's jitted autodiff (padded): one shape per model


class Evaluator(Protocol):
    """s -> (CV(s), dCV/ds) over the folds of one labeled set."""

    route: str
    folds: int

    def __call__(self, s: float) -> tuple[float, float]: ...

    def row_losses(self, s: float) -> np.ndarray | None:
        """(n,) each label's held-out loss at s (None where the route does not keep them)."""
        ...


# --- the compiled functions of one problem --------------------------------------------------------


class Compiled:
    """A run's problem, its initial parameters and the jitted functions built on them (lazily)."""

    def __init__(self, problem, init):
        self.problem, self.init = problem, init
        self._fns: dict = {}

    def _once(self, key, build):
        if key not in self._fns:
            self._fns[key] = build()
        return self._fns[key]

    def linear_rows(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(J (n, k, p), F0 (n, k)) of a linear model at rows ``x``, float64, by autodiff in
        chunks."""
        fn = self._once("rows", self._build_rows)
        x = np.asarray(x, np.float64)
        jacs, offsets = [], []
        with jax.enable_x64(True):
            for start in range(0, max(len(x), 1), CHUNK):
                part = x[start : start + CHUNK]
                padded = np.zeros((CHUNK, x.shape[1]), np.float64)
                padded[: len(part)] = part
                jac, off = fn(jnp.asarray(padded))
                jacs.append(np.asarray(jac)[: len(part)])
                offsets.append(np.asarray(off)[: len(part)])
        return np.concatenate(jacs), np.concatenate(offsets)

    def _build_rows(self):
        with jax.enable_x64(True):
            prob, p0 = hyper.promote(self.problem, self.init)
            flat0, unravel = ravel_pytree(p0)
            zero = jnp.zeros_like(flat0)

            def rows(x):
                out = lambda f: prob.model.apply(unravel(f), prob.stats, x)  # noqa: E731
                return jax.jacfwd(out)(zero), out(zero)

            return jax.jit(rows)

    def reg_form(self) -> tuple[np.ndarray, np.ndarray]:
        """(D, c) of a quadratic regularizer R(θ) = θᵀDθ + cᵀθ + R0, float64."""

        def build():
            with jax.enable_x64(True):
                _, p0 = hyper.promote(self.problem, self.init)
                flat0, unravel = ravel_pytree(p0)
                reg = lambda f: self.problem.reg.value(unravel(f))  # noqa: E731
                parts = jax.jit(lambda z: (0.5 * jax.hessian(reg)(z), jax.grad(reg)(z)))
                dmat, lin = parts(jnp.zeros_like(flat0))  # jitted: eager autodiff is slow
                return np.asarray(dmat), np.asarray(lin)

        return self._once("reg", build)

    def grid_functions(
        self, config: RunConfig, n_pad: int, steps: int, batch: int, stacked: bool = False
    ):
        """(vmapped trainer, per-training held-out loss sums, per-row held-out losses, pool
        predictions) for a padded size: ``choose_s.choose_grid``'s compiled pieces (``stacked``:
        the trainer starts each training from its own parameters, a warm start)."""

        def build():
            problem = self.problem
            cfg = sgdf.TrainConfig.from_dict(
                {
                    **as_config(config).train,
                    "batch_size": batch,
                    "epochs": math.ceil(steps / sgdf.steps_per_epoch(n_pad, batch)),
                }
            )
            train = sgdf.make_fit_many(problem, n_pad, cfg, stacked)

            def per_row(params, data):
                return jax.vmap(lambda p: objective.per_example_loss(problem, p, data.x, data.y))(
                    params
                )

            def held_out(params, data, masks):
                return jnp.sum(
                    hyper.validation_masks(masks, data.w) * per_row(params, data), axis=1
                )

            def rows(params, data, masks):
                return held_out_rows(problem, params, data, masks)

            def predict(params, x):
                return jax.vmap(lambda p: problem.model.apply(p, problem.stats, x))(params)

            return train, jax.jit(held_out), jax.jit(rows), jax.jit(predict)

        return self._once(("grid", n_pad, steps, batch, stacked), build)


class CompiledCache:
    """``Compiled`` entries by what defines the problem; at most ``limit`` kept (oldest dropped)."""

    def __init__(self, limit: int = 16):
        self.limit = limit
        self._entries: dict[str, Compiled] = {}

    def get(self, config: RunConfig) -> Compiled:
        config = as_config(config)
        key = json.dumps(
            [
                config.model.to_json(),
                config.regularizer,
                config.task,
                config.classes,
                config.standardizer,
                config.seed,
            ],
            sort_keys=True,
            default=str,
        )
        if key not in self._entries:
            if len(self._entries) >= self.limit:
                self._entries.pop(next(iter(self._entries)))
            init = fitting.build_model(config).init(jax.random.PRNGKey(config.seed))
            self._entries[key] = Compiled(fitting.build_problem(config, init), init)
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


COMPILED = CompiledCache()


def setup(config: RunConfig, x, y) -> tuple[Compiled, Data]:
    """The run's compiled problem and its labeled data, targets standardized as training sees them.

    Targets are standardized with the statistics of all labels, as ``fitting.fit`` does, so CV
    losses are in standardized units (1 ≈ predicting the mean). For models linear in θ this changes
    neither the chosen s nor any prediction: the free bias absorbs the mean and s is invariant to
    the scale.
    """
    config = as_config(config)
    compiled = COMPILED.get(config)
    targets = fitting.make_targets(config, y, fitting.target_stats(config, y))
    return compiled, objective.make_data(x, targets)


def route_for(problem, route: str = "auto") -> str:
    """The route a problem takes: ``route`` when it is one of ROUTES, else by the model and loss."""
    if route == "exact" and not hyper.is_linear(problem):
        raise UserError(
            "the exact route needs a linear or poly model with the squared loss (regression)"
        )
    if route in ROUTES:
        return route
    if hyper.is_linear(problem):
        return "exact"
    return "grid" if problem.loss.name == "squared" else "sgdf"


# --- exact: linear and poly models ----------------------------------------------------------------


class ExactCV:
    """CV(s) and its hypergradient for a linear model: every fold solved exactly
    (``core.linear_cv``)."""

    route = "exact"

    def __init__(self, compiled: Compiled, data: Data, masks):
        if not hyper.is_linear(compiled.problem):
            raise ValueError("ExactCV solves linear or poly models with the squared loss")
        self.compiled = compiled
        jac, offset = compiled.linear_rows(np.asarray(data.x))
        dmat, lin = compiled.reg_form()
        self.cv = linear_cv.LinearCV(jac, offset, data.y, data.w, masks, dmat, lin)
        self.folds = int(np.shape(masks)[0])

    def __call__(self, s: float) -> tuple[float, float]:
        return self.cv(s)

    def row_losses(self, s: float) -> np.ndarray:
        """(n,) each row's loss under the fold that held it out, at s: the terms CV(s) averages."""
        return self.cv.row_losses(s)

    def loocv(self, s: float) -> tuple[float, float]:
        """Closed-form LOOCV and its s-derivative."""
        return self.cv.loocv(s)

    def loo_rows(self, s: float) -> np.ndarray:
        """(n,) each row's closed-form leave-one-out loss at s."""
        return self.cv.loo_rows(s)

    def g_pert(self, s: float) -> float:
        """G_pert / n (eq. 44) at θ*(s)."""
        return self.cv.g_pert(s)

    def spread(self, s: float, x_pool) -> float:
        """The fit on every label at s: its predictions' variance on ``x_pool`` over the labels'."""
        jac, offset = self.compiled.linear_rows(x_pool)
        return self.cv.spread(s, jac, offset)


def held_out_rows(problem, params, data: Data, masks):
    """(n,) each row's loss under the fold that left it out (params stacked per fold; 0 for weight-0
    rows)."""
    v = hyper.validation_masks(masks, data.w)
    per_row = jax.vmap(lambda p: objective.per_example_loss(problem, p, data.x, data.y))(params)
    return jnp.sum(v * per_row, axis=0)


# --- sgdf: any model ------------------------------------------------------------------------------


class SGDFCV:
    """CV(s) and its hypergradient from SGDF fold trainings carried along s (any model).

    The folds (and, with ``full``, one more training on every row, for G_pert) train at once under
    vmap as the labeled set with per-fold weights. Each evaluation starts from the evaluated folds
    nearest in log s, moved by the first-order prediction θ + θ̇ Δs (Δs capped at a factor of 2),
    and runs ``steps`` SGDF steps with a fresh optimizer; θ̇ is carried along.
    """

    def __init__(
        self,
        problem,
        data: Data,
        masks,
        cfg: sgdf.TrainConfig,
        params,
        tangent,
        steps: int,
        first_steps: int,
        full: bool = False,
    ):
        n = int(data.x.shape[0])
        masks = np.asarray(masks, np.float32)
        if full:
            masks = np.concatenate([masks, np.ones((1, n), np.float32)])
        self.problem, self.data, self.masks, self.full = problem, data, jnp.asarray(masks), full
        per_epoch = sgdf.steps_per_epoch(n, cfg.batch_size)
        self.cfg = sgdf.TrainConfig.from_dict(
            {**cfg.to_dict(), "epochs": max(1, math.ceil(steps / per_epoch)), "tangent_every": 1}
        )
        self.segments_first = max(1, math.ceil(first_steps / (self.cfg.epochs * per_epoch)))
        opt = sgdf.make_optimizer(self.cfg, self.cfg.epochs * per_epoch)
        epoch = sgdf.make_epoch(problem, opt, n, self.cfg)
        self._epoch = jax.jit(jax.vmap(epoch, in_axes=(0, Data(None, None, 0), None, None)))
        self._init = jax.jit(jax.vmap(lambda p, t: sgdf.init_state(p, opt, t)))
        self._cv = jax.jit(lambda p, t, d, m: hyper.cv_loss_and_hypergradient(problem, p, t, d, m))
        tile = lambda tree: jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(jnp.asarray(a), (masks.shape[0], *jnp.shape(a))), tree
        )  # noqa: E731
        tangent = jax.tree_util.tree_map(jnp.zeros_like, params) if tangent is None else tangent
        self.start = (params, tile(params), tile(tangent))
        self.points: list[tuple[float, object, object]] = []  # (s, stacked θ, stacked θ̇)

    def _warm(self, s: float):
        if not self.points:
            return self.start[1], self.start[2], self.segments_first
        s0, params, tangents = min(self.points, key=lambda p: abs(math.log(p[0] / s)))
        ds = s0 * min(max(s / s0 - 1.0, -0.5), 1.0)
        params = jax.tree_util.tree_map(lambda p, t: p + ds * t, params, tangents)
        return params, tangents, 1

    def __call__(self, s: float) -> tuple[float, float]:
        params, tangents, segments = self._warm(s)
        weights = self.data.w[None, :] * self.masks
        data_k = Data(self.data.x, self.data.y, weights)
        s_arr = jnp.asarray(s, jnp.float32)
        e = 0
        for _ in range(segments):
            state = self._init(params, tangents)
            for _ in range(self.cfg.epochs):
                state, _ = self._epoch(state, data_k, s_arr, sgdf.epoch_key(self.cfg.seed, e))
                e += 1
            params, tangents = state.params, state.tangent
        self.points.append((s, params, tangents))
        cv, g = self._cv(params, tangents, self.data, self.masks)
        return float(cv), float(g)

    def full_params(self, s: float):
        """The all-rows training's θ at an evaluated s (``full=True`` only)."""
        _, params, _ = min(self.points, key=lambda p: abs(math.log(p[0] / s)))
        return jax.tree_util.tree_map(lambda a: a[-1], params)

    route = "sgdf"

    @property
    def folds(self) -> int:
        return int(self.masks.shape[0]) - (1 if self.full else 0)

    def row_losses(self, s: float) -> None:
        """Not kept: the SGDF route's fold trainings move on with every evaluation."""
        return None


def evaluator(
    config: RunConfig, x, y, tc, params=None, tangent=None, full: bool = False
) -> tuple[str, Evaluator, int]:
    """(route, evaluator, folds) for a run's labeled arrays (``tc``: the run's ``TuneConfig``)."""
    compiled, data = setup(config, x, y)
    n = int(data.x.shape[0])
    k = min(n, tc.folds) if n > tc.loo_below else n
    masks = hyper.fold_masks(n, k, tc.seed)
    route = route_for(compiled.problem, tc.route)
    if route == "exact":
        return route, ExactCV(compiled, data, masks), k
    # "grid" chooses by its own trainings (choose_grid); the SGDF folds here draw its curve
    cfg = fitting.train_config(config, n)
    first = (
        tc.steps * 2
        if params is not None
        else int(as_config(config).train.get("min_steps", fitting.MIN_STEPS))
    )
    start = compiled.init if params is None else jax.tree_util.tree_map(jnp.asarray, params)
    ev = SGDFCV(compiled.problem, data, masks, cfg, start, tangent, tc.steps, first, full)
    return route, ev, k
