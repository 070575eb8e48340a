"""Choosing the regularity s for a run's labeled arrays (``--s auto``, ``--s loocv``, ``alloop tune-s``).

- ``auto``: minimize the k-fold cross-validated loss (LOOCV when the labeled set is small) by gradient
  steps on log s with the hypergradient dCV/ds = Σ_val ∇L·θ̇ (``core.hyper``), warm-started from the
  previous round's s. Linear and poly models with the squared loss get their folds' θ and θ̇ from exact
  solves (route ``exact``). Other regression models (the MLP) take the best s of a fixed grid, every
  (fold, s) trained from the initial parameters at once (route ``grid``, ``choose_grid``): the search
  below was erratic for them on few labels (docs/choosing-s.md). Classification models train their
  folds with SGDF, all folds at once (vmapped), each evaluation continuing from the nearest evaluated
  folds' (θ, θ̇) moved by θ̇ Δs (route ``sgdf``): no fold is ever retrained from scratch for a new s.
- ``loocv`` (linear and poly, squared loss): the closed-form LOOCV error on a log grid of s, its global
  minimum refined by the same search.
- ``validation_curve``: the CV error over a log grid (the paper's Figure 2), with closed-form LOOCV and
  G_pert (eq. 44) where they are tractable; ``plot_png`` draws it.

No files here: ``plot_png`` returns the figure's bytes for the caller to write.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alloop import config as config_mod
from alloop.config import RunConfig, as_config
from alloop.core import hyper, objective, sgdf
from alloop.core.objective import Data
from alloop.errors import UserError
from alloop.training import fit as fitting

MODES = config_mod.S_MODES


@dataclass(frozen=True)
class TuneConfig:
    """How s is chosen. Stored in a run's config under "tune" (only what the user gave)."""

    folds: int = 5
    loo_below: int = 30  # LOOCV (one fold per row) when there are at most this many labels
    s_init: float = 1.0  # where the first round's search starts
    s_min: float = 1e-4
    s_max: float = 1e5
    tol: float = 0.01  # stop when s is bracketed to about 1%
    flat: float = (
        1e-3  # leave s where it is when a factor e changes the CV loss by less than this fraction
    )
    max_evals: int = 16
    route: str = "auto"  # "exact" (linear/poly, squared loss) | "grid" (other regression models) | "sgdf" | "auto"
    steps: int = 300  # SGDF steps per evaluation (warm-started)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TuneConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


parse_s, is_mode = config_mod.parse_s, config_mod.is_s_mode  # the --s grammar lives with the config


def tune_config(config: RunConfig, **overrides) -> TuneConfig:
    config = as_config(config)
    base = {"seed": config.seed, **(config.tune or {})}
    return TuneConfig.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None}})


def n_folds(n: int, tc: TuneConfig) -> int:
    """The folds used for n labels: one per row (LOOCV) at or below ``loo_below`` labels."""
    return n if n <= tc.loo_below else min(tc.folds, n)


def trained_s(config: RunConfig, meta: dict | None) -> float:
    """The numeric s the run's model was trained with: the checkpoint's, when s is chosen per round."""
    config = as_config(config)
    if not is_mode(config.s):
        return float(config.s)
    if meta and isinstance(meta.get("s"), (int, float)):
        return float(meta["s"])
    return tune_config(config).s_init


# --- evaluators: s -> (CV(s), dCV/ds) ---------------------------------------------------------------


_PROBLEMS: dict = {}  # one Problem (and its jitted evaluators) per model: XLA compiles them once per process and shape


def _problem(config: RunConfig):
    """(problem, initial parameters, jitted exact-CV functions) of the run's model, built once per process.

    Rebuilding them every search made every call compile anew (seconds a round in a simulation)."""
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
    if key not in _PROBLEMS:
        if len(_PROBLEMS) > 16:
            _PROBLEMS.clear()
        init = fitting.build_model(config).init(jax.random.PRNGKey(config.seed))
        _PROBLEMS[key] = (fitting.build_problem(config, init), init, {})
    return _PROBLEMS[key]


def _setup(config: RunConfig, x, y):
    """The run's problem, initial parameters and labeled data, targets standardized as training sees them.

    Targets are standardized with the statistics of all labels, as ``fitting.fit`` does, so CV losses
    are in standardized units (1 ≈ predicting the mean). For models linear in θ this changes neither
    the chosen s nor any prediction: the free bias absorbs the mean and s is invariant to the scale.
    """
    config = as_config(config)
    problem, init, _ = _problem(config)
    return (
        problem,
        init,
        objective.make_data(x, fitting.make_targets(config, y, fitting.target_stats(config, y))),
    )


def route_for(problem, tc: TuneConfig) -> str:
    if tc.route == "exact" and not hyper.is_linear(problem):
        raise UserError(
            "the exact route needs a linear or poly model with the squared loss (regression)"
        )
    if tc.route in ("exact", "sgdf", "grid"):
        return tc.route
    if hyper.is_linear(problem):
        return "exact"
    return "grid" if problem.loss.name == "squared" else "sgdf"


class ExactCV:
    """CV(s) and its hypergradient for a linear model: every fold solved exactly (float64).

    The linear form is rebuilt inside each jitted function (cheap to run); the functions are built once per
    problem (``_exact_functions``), so each shape compiles once per process.
    """

    def __init__(self, problem, init, data: Data, masks):
        self.problem, self.init = problem, init
        with jax.enable_x64(True):
            self.data = hyper.cast(data, jnp.float64)
            self.masks = jnp.asarray(masks, jnp.float64)
        self._cv, self._loo, self._gp, self._rows, self._looc = _exact_functions(problem, init)

    def __call__(self, s: float) -> tuple[float, float]:
        with jax.enable_x64(True):
            cv, g = self._cv(self.data, self.masks, jnp.float64(s))
            return float(cv), float(g)

    def loocv(self, s: float) -> tuple[float, float]:
        """Closed-form LOOCV and its s-derivative."""
        with jax.enable_x64(True):
            v, g = self._loo(self.data, jnp.float64(s))
            return float(v), float(g)

    def g_pert(self, s: float) -> float:
        """G_pert / n (eq. 44) at θ*(s)."""
        with jax.enable_x64(True):
            return float(self._gp(self.data, jnp.float64(s)))

    def loo_rows(self, s: float) -> np.ndarray:
        """(n,) each row's closed-form leave-one-out loss at s."""
        with jax.enable_x64(True):
            return np.asarray(self._looc(self.data, jnp.float64(s)), np.float64)

    def row_losses(self, s: float) -> np.ndarray:
        """(n,) each row's loss under the fold that held it out, at s: the terms CV(s) averages."""
        with jax.enable_x64(True):
            return np.asarray(self._rows(self.data, self.masks, jnp.float64(s)), np.float64)


def _exact_functions(problem, init):
    """The jitted CV, LOOCV and G_pert functions of a linear problem, kept with it (one compilation per shape)."""
    cache = next((fns for p, _, fns in _PROBLEMS.values() if p is problem), {})
    if "exact" not in cache:
        form = lambda d: hyper.linear_form(problem, init, d.x)  # noqa: E731
        cache["exact"] = (
            jax.jit(lambda d, m, s: hyper.exact_cv(problem, form(d), d, m, s)),
            jax.jit(lambda d, s: hyper.loocv_and_derivative(form(d), d.y, d.w, s)),
            jax.jit(lambda d, s: _g_pert_linear(problem, form(d), d, s)),
            jax.jit(lambda d, m, s: _row_losses_linear(problem, form(d), d, m, s)),
            jax.jit(
                lambda d, s: jnp.where(
                    d.w > 0, jnp.sum(hyper.loocv(form(d), d.y, d.w, s).residuals ** 2, axis=1), 0.0
                )
            ),
        )
    return cache["exact"]


def _row_losses_linear(problem, form, data, masks, s):
    theta, _ = hyper.fold_solutions(form, data.y, data.w, masks, s)
    prob, d = hyper.promote(problem, data)
    params = jax.vmap(form.unravel)(theta)
    return held_out_rows(prob, params, d, masks)


def held_out_rows(problem, params, data: Data, masks):
    """(n,) each row's loss under the fold that left it out (params stacked per fold; 0 for weight-0 rows)."""
    v = hyper.validation_masks(masks, data.w)
    per_row = jax.vmap(lambda p: objective.per_example_loss(problem, p, data.x, data.y))(params)
    return jnp.sum(v * per_row, axis=0)


def _g_pert_linear(problem, form, data, s):
    theta, _ = hyper.full_solution(form, data.y, data.w, s)
    prob, _ = hyper.promote(problem, ())
    return hyper.g_pert_terms(prob, form.unravel(theta), s, data)[0]


class SGDFCV:
    """CV(s) and its hypergradient from SGDF fold trainings carried along s (any model).

    The folds (and, with ``full``, one more training on every row, for G_pert) train at once under
    vmap as the labeled set with per-fold weights. Each evaluation starts from the evaluated folds
    nearest in log s, moved by the first-order prediction θ + θ̇ Δs (Δs capped at a factor of 2), and
    runs ``steps`` SGDF steps with a fresh optimizer; θ̇ is carried along.
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
        self.problem, self.data, self.masks = problem, data, jnp.asarray(masks)
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


def evaluator(
    config: RunConfig, x, y, tc: TuneConfig, params=None, tangent=None, full: bool = False
):
    """(route, evaluate, folds) for a run's labeled arrays."""
    problem, init, data = _setup(config, x, y)
    n = int(data.x.shape[0])
    k = n_folds(n, tc)
    masks = hyper.fold_masks(n, k, tc.seed)
    route = route_for(problem, tc)
    if route == "exact":
        return route, ExactCV(problem, init, data, masks), k
    # "grid" chooses by its own trainings (choose_grid); the SGDF folds here draw its curve (validation_curve)
    cfg = fitting.train_config(config, n)
    first = (
        tc.steps * 2
        if params is not None
        else int(as_config(config).train.get("min_steps", fitting.MIN_STEPS))
    )
    start = init if params is None else jax.tree_util.tree_map(jnp.asarray, params)
    return route, SGDFCV(problem, data, masks, cfg, start, tangent, tc.steps, first, full), k


# --- choosing s ----------------------------------------------------------------------------------


class Choice(NamedTuple):
    s: float
    mode: str
    cv_loss: float
    folds: int
    route: str
    s_start: float
    evaluations: tuple  # of hyper.Evaluation
    stop: str
    seconds: float
    spread: float | None = (
        None  # pool_spread at the chosen s, when a pool sample was given (None otherwise)
    )
    row_loss: np.ndarray | None = (
        None  # (n,) each label's held-out loss at the chosen s (cv_loss is their mean); paired across
    )
    # models, since every route uses the same folds for the same labels (``choose_model`` compares candidates with it)

    def record(self) -> dict:
        """What a checkpoint's meta and the history keep about the choice (no timing: same inputs, same bytes)."""
        return {
            "s": self.s,
            "mode": self.mode,
            "cv_loss": self.cv_loss,
            "folds": self.folds,
            "route": self.route,
            "s_start": self.s_start,
            "evaluations": len(self.evaluations),
            "stop": self.stop,
            **({} if self.spread is None else {"spread": self.spread}),
        }


def choose_s(
    config: RunConfig,
    x,
    y,
    *,
    mode: str = "auto",
    s_prev: float | None = None,
    params=None,
    tangent=None,
    tc: TuneConfig | None = None,
    ev=None,
    x_pool=None,
) -> Choice:
    """Choose s for these labels: ``auto`` (hypergradient search from ``s_prev``) or ``loocv`` (closed form).
    ``x_pool``: a uniform sample of pool rows, on which the choice also measures its ``pool_spread``."""
    t0 = time.perf_counter()
    tc = tc or tune_config(config)
    if len(x) < 2:
        raise UserError("choosing s needs at least 2 labels: give a number with --s for now")
    s0 = float(s_prev) if s_prev is not None else tc.s_init
    if mode == "loocv":
        choice = _choose_loocv(config, x, y, tc, s0, t0)
        return (
            choice
            if x_pool is None
            else choice._replace(spread=pool_spread(config, x, y, choice.s, x_pool))
        )
    if (ev[0] if ev else route_for(_problem(as_config(config))[0], tc)) == "grid":
        return choose_grid(config, x, y, tc=tc, x_pool=x_pool)
    route, ev_, k = ev or evaluator(config, x, y, tc, params, tangent)
    res = hyper.minimize_log_s(
        ev_, s0, tc.s_min, tc.s_max, tol=tc.tol, max_evals=tc.max_evals, flat=tc.flat
    )
    spread = (
        pool_spread(config, x, y, res.s, x_pool)
        if x_pool is not None and route == "exact"
        else None
    )
    rows = ev_.row_losses(res.s) if route == "exact" else None
    return Choice(
        res.s,
        "auto",
        res.loss,
        k,
        route,
        s0,
        res.evaluations,
        res.stop,
        time.perf_counter() - t0,
        spread,
        rows,
    )


# --- how much a fit's predictions vary over the pool ----------------------------------------------


def pool_spread(config: RunConfig, x, y, s: float, x_pool) -> float:
    """The variance of a linear or poly model's predictions (fitted exactly at s on every label) over the rows
    ``x_pool``, divided by the variance of the labels.

    The conditional mean E[y|x] never varies more than y does (Var E[y|x] ≤ Var y), so a fit whose predictions
    on the pool vary more than its labels is extrapolating: ``choose_model`` uses it against polynomials that
    cross-validate well on a few labels and run wild between or beyond them."""
    problem, init, data = _setup(config, x, y)
    if not hyper.is_linear(problem):
        raise ValueError(
            "pool_spread solves linear or poly models exactly; the grid reports its MLP's own"
        )
    with jax.enable_x64(True):
        d = hyper.cast(data, jnp.float64)
        return float(
            _spread_function(problem, init)(d, jnp.float64(s), jnp.asarray(x_pool, jnp.float64))
        )


def _variance_ratio(pred, y, w):
    """Variance of ``pred`` over its rows (mean over leading axes) over the variance of the positive-weight labels."""
    on = (w > 0).astype(y.dtype)
    count = jnp.maximum(jnp.sum(on), 2.0)
    labels = y.reshape(y.shape[0], -1)[:, 0]
    mean = jnp.sum(on * labels) / count
    var_y = jnp.sum(on * (labels - mean) ** 2) / (count - 1.0)
    var_pred = jnp.mean(jnp.var(pred[..., 0], axis=-1))
    return var_pred / jnp.maximum(var_y, 1e-300)


def _spread_function(problem, init):
    """The jitted ``pool_spread`` of a linear problem, kept with it (one compilation per shape)."""
    cache = next((fns for p, _, fns in _PROBLEMS.values() if p is problem), {})
    if "spread" not in cache:

        def spread(d, s, x_pool):
            form = hyper.linear_form(problem, init, d.x)
            theta, _ = hyper.full_solution(form, d.y, d.w, s)
            prob, params = hyper.promote(problem, form.unravel(theta))
            return _variance_ratio(prob.model.apply(params, prob.stats, x_pool), d.y, d.w)

        cache["spread"] = jax.jit(spread)
    return cache["spread"]


GRID_S = (
    0.1,
    0.3,
    1.0,
    3.0,
    10.0,
    30.0,
)  # the s a grid search tries (the MLP in --model auto; docs/results.md)
GRID_STEPS = 1000  # steps of each grid training, from the model's initial parameters
GRID_BATCH = 256  # rows per step: full batch up to 256 labels, minibatches above (the cost stops growing with the labels)


def choose_grid(
    config: RunConfig,
    x,
    y,
    *,
    tc: TuneConfig | None = None,
    grid=GRID_S,
    steps: int = GRID_STEPS,
    x_pool=None,
) -> Choice:
    """The s of ``grid`` with the lowest k-fold CV loss, every (fold, s) trained at once from the initial parameters.

    For models whose hypergradient search is erratic on few labels (the MLP: docs/choosing-s.md): no warm
    start from a fit that saw the held-out rows, no search path, the same folds as ``evaluator``. Rows are
    padded with weight-0 rows to a power of two (at least 64), so XLA compiles once per size; each training
    takes ``steps`` steps of at most GRID_BATCH rows, so its cost stops growing with the labels. With
    ``x_pool``, the choice's ``spread`` is ``pool_spread``'s measure from the chosen s's fold trainings.
    """
    t0 = time.perf_counter()
    tc = tc or tune_config(config)
    n = len(x)
    if n < 2:
        raise UserError("choosing s needs at least 2 labels: give a number with --s for now")
    problem, init, data = _setup(config, x, y)
    k = n_folds(n, tc)
    n_pad = max(64, 1 << (n - 1).bit_length())
    pad = lambda a: jnp.concatenate([a, jnp.repeat(a[:1], n_pad - n, axis=0)])  # noqa: E731
    padded = Data(
        pad(data.x), pad(data.y), jnp.concatenate([data.w, jnp.zeros(n_pad - n, jnp.float32)])
    )
    masks = np.zeros((k, n_pad), np.float32)
    masks[:, :n] = hyper.fold_masks(n, k, tc.seed)
    grid = np.asarray(grid, np.float64)
    weights = np.repeat(masks, len(grid), axis=0) * np.asarray(padded.w)[None, :]
    s_all = np.tile(grid, k).astype(np.float32)
    train, held_out = _grid_functions(config, problem, n_pad, steps)
    params = train(init, padded, jnp.asarray(weights), jnp.asarray(s_all))
    loss = np.asarray(
        held_out(params, padded, jnp.asarray(np.repeat(masks, len(grid), axis=0))), np.float64
    )
    cv = loss.reshape(k, len(grid)).sum(axis=0) / max(n, 1)
    i = int(np.argmin(np.where(np.isfinite(cv), cv, np.inf)))
    evals = tuple(hyper.Evaluation(float(s), float(v), float("nan")) for s, v in zip(grid, cv))
    chosen = jax.tree_util.tree_map(
        lambda a: a[i :: len(grid)], params
    )  # the chosen s's k fold trainings (index fold·len(grid) + i)
    rows = np.asarray(held_out_rows(problem, chosen, padded, jnp.asarray(masks)), np.float64)[:n]
    spread = None
    if x_pool is not None:
        pred = jax.vmap(
            lambda p: problem.model.apply(p, problem.stats, jnp.asarray(x_pool, jnp.float32))
        )(chosen)
        spread = float(_variance_ratio(pred, data.y, data.w))
    return Choice(
        float(grid[i]),
        "grid",
        float(cv[i]),
        k,
        "grid",
        float(grid[0]),
        evals,
        "grid",
        time.perf_counter() - t0,
        spread,
        rows,
    )


def _grid_functions(config: RunConfig, problem, n_pad: int, steps: int):
    """(vmapped trainer, per-training held-out loss sums) for a problem and padded size, built once per process."""
    cache = next((fns for p, _, fns in _PROBLEMS.values() if p is problem), {})
    key = ("grid", n_pad, steps)
    if key not in cache:
        batch = min(n_pad, GRID_BATCH)
        cfg = sgdf.TrainConfig.from_dict(
            {
                **as_config(config).train,
                "batch_size": batch,
                "epochs": math.ceil(steps / sgdf.steps_per_epoch(n_pad, batch)),
            }
        )
        train = sgdf.make_fit_many(problem, n_pad, cfg)

        def held_out(params, data, masks):
            v = hyper.validation_masks(masks, data.w)
            per_row = jax.vmap(lambda p: objective.per_example_loss(problem, p, data.x, data.y))(
                params
            )
            return jnp.sum(v * per_row, axis=1)

        cache[key] = (train, jax.jit(held_out))
    return cache[key]


def _choose_loocv(config, x, y, tc: TuneConfig, s0: float, t0: float) -> Choice:
    """Global minimum of closed-form LOOCV on a log grid, refined between its grid neighbours."""
    problem, init, data = _setup(config, x, y)
    if not hyper.is_linear(problem):
        raise UserError(
            "--s loocv needs a linear or poly model with the squared loss: use --s auto"
        )
    ev = ExactCV(
        problem, init, data, np.ones((1, len(x)), np.float32)
    )  # the masks are not used here
    grid = log_grid(tc.s_min, tc.s_max, 8)
    loss = np.array([ev.loocv(float(s))[0] for s in grid])
    i = int(np.nanargmin(loss))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = hyper.minimize_log_s(
        ev.loocv,
        float(grid[i]),
        lo,
        hi,
        step=0.5 * math.log(grid[1] / grid[0]),
        tol=tc.tol,
        max_evals=tc.max_evals,
        flat=0.0,
    )
    evals = (
        tuple(hyper.Evaluation(float(s), float(v), float("nan")) for s, v in zip(grid, loss))
        + res.evaluations
    )
    rows = ev.loo_rows(res.s)
    return Choice(
        res.s,
        "loocv",
        res.loss,
        len(x),
        "closed-form",
        s0,
        evals,
        res.stop,
        time.perf_counter() - t0,
        row_loss=rows,
    )


def resolve_s(
    config: RunConfig, x, y, *, s_prev: float | None = None, params=None, tangent=None, x_pool=None
) -> tuple[float, Choice | None]:
    """The numeric s to train with: the config's number, or the value chosen now for its mode (``x_pool``: see ``choose_s``)."""
    config = as_config(config)
    if not is_mode(config.s):
        return float(config.s), None
    choice = choose_s(
        config, x, y, mode=config.s, s_prev=s_prev, params=params, tangent=tangent, x_pool=x_pool
    )
    return choice.s, choice


# --- the validation curve (Figure 2) ----------------------------------------------------------------


def log_grid(s_min: float, s_max: float, per_decade: int) -> np.ndarray:
    decades = math.log10(s_max / s_min)
    return np.logspace(
        math.log10(s_min), math.log10(s_max), max(int(round(decades * per_decade)) + 1, 2)
    )


class Curve(NamedTuple):
    s: np.ndarray
    cv: np.ndarray  # the cross-validated loss the choice minimizes
    cv_label: str
    loocv: np.ndarray | None  # closed-form LOOCV (linear/poly)
    g_pert: np.ndarray | None  # G_pert / n (eq. 44), where the dense Hessian is tractable
    folds: int
    route: str
    choice: Choice

    def local_minima(self) -> list[float]:
        """Grid values of s where the CV loss is lower than at both neighbours (ends included)."""
        v = np.asarray(self.cv)
        left = np.r_[np.inf, v[:-1]]
        right = np.r_[v[1:], np.inf]
        return [float(s) for s, a, b, c in zip(self.s, left, v, right) if b < a and b < c]

    def to_dict(self) -> dict:
        opt = lambda a: None if a is None else [float(v) for v in a]  # noqa: E731
        return {
            "s": opt(self.s),
            "cv": opt(self.cv),
            "cv_label": self.cv_label,
            "loocv": opt(self.loocv),
            "g_pert": opt(self.g_pert),
            "folds": self.folds,
            "route": self.route,
            "local_minima": self.local_minima(),
            "choice": self.choice.record(),
        }


def validation_curve(
    config: RunConfig,
    x,
    y,
    grid,
    *,
    s_prev: float | None = None,
    params=None,
    tangent=None,
    mode: str = "auto",
) -> Curve:
    """The criterion ``mode`` minimizes over ``grid`` (k-fold CV, or closed-form LOOCV for "loocv"), with
    closed-form LOOCV and G_pert beside it where tractable, and the s the mode chooses (auto shares the
    grid's fold trainings).
    """
    tc = tune_config(config)
    route, ev, k = evaluator(config, x, y, tc, params, tangent, full=True)
    grid = np.asarray(grid, np.float64)
    s0 = float(s_prev) if s_prev is not None else tc.s_init
    order = np.argsort(
        np.abs(np.log(grid / s0))
    )  # outward from s0: each point continues its neighbour
    cv = np.empty(len(grid))
    for i in order:
        cv[i] = ev(float(grid[i]))[0]
    loo = gp = None
    if route == "exact":
        loo = np.array([ev.loocv(float(s))[0] for s in grid])
        gp = np.array([ev.g_pert(float(s)) for s in grid])
    elif hyper.g_pert_tractable(ev.start[0]):
        gp = np.array(
            [
                hyper.g_pert(ev.problem, ev.full_params(float(s)), float(s), ev.data).value
                for s in grid
            ]
        )
    choice = choose_s(
        config, x, y, mode=mode, s_prev=s0, tc=tc, ev=None if mode == "loocv" else (route, ev, k)
    )
    label = ("LOOCV" if k == len(x) else f"{k}-fold CV") + (
        " (exact)" if route == "exact" else " (SGDF)"
    )
    if mode == "loocv":
        cv, label, k = loo, "LOOCV (closed form)", len(x)
    return Curve(grid, cv, label, loo, gp, k, route, choice)


def plot_png(curve: Curve, title: str = "") -> bytes:
    """The validation error against s (log axis), local minima and the chosen s marked: PNG bytes."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    ax.semilogx(curve.s, curve.cv, "-", color="C0", lw=2, label=curve.cv_label)
    if curve.loocv is not None and not curve.cv_label.startswith("LOOCV"):
        ax.semilogx(curve.s, curve.loocv, "--", color="C2", label="LOOCV (closed form)")
    if curve.g_pert is not None:
        ax.semilogx(curve.s, curve.g_pert, ":", color="C3", lw=1.5, label="G_pert (eq. 44)")
    mins = curve.local_minima()
    if mins:
        idx = [int(np.argmin(np.abs(curve.s - m))) for m in mins]
        ax.plot(
            curve.s[idx], curve.cv[idx], "o", mfc="none", color="C0", label="local minima (grid)"
        )
    c = curve.choice
    ax.axvline(c.s, color="k", lw=1, ls="--")
    ax.plot([c.s], [c.cv_loss], "*", color="k", ms=12, label=f"chosen s = {c.s:.4g} ({c.mode})")
    ax.set_xlabel("regularity s")
    ax.set_ylabel("validation loss (mean per row)")
    ax.set_title(title or "Validation error against s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
