"""Choosing the regularity s for a run's labeled arrays (``--s auto``, ``--s loocv``).

- ``auto``: minimize the k-fold cross-validated loss (LOOCV when the labeled set is small) by
  gradient steps on log s with the hypergradient dCV/ds = Σ_val ∇L·θ̇ (``core.hyper``), warm-started
  from the previous round's s. How CV(s) is evaluated is the route's (``cv_routes``): linear and
  poly models with the squared loss solve their folds in closed form (``exact``); classification
  models train their folds with SGDF carried along s (``sgdf``). Other regression models (the MLP)
  take the best s of a fixed grid, every (fold, s) trained at once (``grid``, ``choose_grid``): the
  search was erratic for them on few labels (docs/choosing-s.md). A grid search starts from the last
  round's trainings when it has them (``GridWarm``).
- ``loocv`` (linear and poly, squared loss): the closed-form LOOCV error on a log grid of s, its
  global minimum refined by the same search.

The validation curve of ``alloop tune-s`` is ``validation_curve.py``. No files here: a run keeps a
grid's trainings through ``grid_state_record`` / ``grid_state_from``.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alloop import config as config_mod
from alloop.config import RunConfig, as_config
from alloop.core import hyper
from alloop.core.objective import Data
from alloop.errors import UserError
from alloop.training import cv_routes

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
    # "exact" (linear/poly, squared loss) | "grid" (other regression models) | "sgdf" | "auto"
    route: str = "auto"
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
    """The numeric s the run's model was trained with: the checkpoint's, when s is chosen per
    round."""
    config = as_config(config)
    if not is_mode(config.s):
        return float(config.s)
    if meta and isinstance(meta.get("s"), (int, float)):
        return float(meta["s"])
    return tune_config(config).s_init


# --- routes (``cv_routes``): s -> (CV(s), dCV/ds) -------------------------------------------------


def route_for(problem, tc: TuneConfig) -> str:
    return cv_routes.route_for(problem, tc.route)


def evaluator(
    config: RunConfig, x, y, tc: TuneConfig, params=None, tangent=None, full: bool = False
):
    """(route, evaluator, folds) for a run's labeled arrays (``cv_routes.evaluator``)."""
    return cv_routes.evaluator(config, x, y, tc, params, tangent, full)


# --- choosing s ----------------------------------------------------------------------------------


class GridWarm(NamedTuple):
    """A grid search's trainings, kept to warm-start the next round's: valid for labels whose first
    ``n`` rows are these (``fingerprint``), with the same folds and s grid."""

    n: int
    folds: int
    grid: tuple
    fingerprint: str
    params: object  # the chosen s's trainings, stacked per fold

    def fits(self, x, y, folds: int, grid) -> bool:
        """Whether these trainings can start the search on labels (x, y)."""
        return (
            self.folds == folds
            and tuple(self.grid) == tuple(float(s) for s in grid)
            and len(x) > self.n
            and self.fingerprint == label_fingerprint(x[: self.n], y[: self.n])
        )


def grid_state_record(state: GridWarm) -> tuple[dict, dict]:
    """(tree, meta) of a grid state, for a run to keep between trainings (``grid_state_from``)."""
    meta = {
        "n": state.n,
        "folds": state.folds,
        "grid": list(state.grid),
        "fingerprint": state.fingerprint,
    }
    return {"params": state.params}, meta


def grid_state_like(config: RunConfig, folds: int) -> dict:
    """The tree shape ``grid_state_record`` stores for the MLP candidate of ``config`` (to load
    it)."""
    init = cv_routes.COMPILED.get(config).init
    return {
        "params": jax.tree_util.tree_map(
            lambda a: np.zeros((folds, *np.shape(a)), np.float32), init
        )
    }


def grid_state_from(tree: dict, meta: dict) -> GridWarm:
    """The grid state a run kept (``grid_state_record``)."""
    params = jax.tree_util.tree_map(jnp.asarray, tree["params"])
    return GridWarm(
        int(meta["n"]), int(meta["folds"]), tuple(meta["grid"]), str(meta["fingerprint"]), params
    )


def label_fingerprint(x, y) -> str:
    """A digest of labeled rows (features and targets as float32), to recognize them next round."""
    h = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.float64), np.float32).tobytes())
    return h.hexdigest()[:16]


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
    # (n,) each label's held-out loss at the chosen s (cv_loss is their mean); paired across
    row_loss: np.ndarray | None = None
    # models, since every route uses the same folds for the same labels (``choose_model`` compares
    # candidates with it)
    grid_state: GridWarm | None = (
        None  # the grid's trainings, to warm-start the next round's (grid only)
    )

    def record(self) -> dict:
        """What a checkpoint's meta and the history keep about the choice (no timing: same inputs,
        same bytes)."""
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
    warm: GridWarm | None = None,
) -> Choice:
    """Choose s for these labels: ``auto`` (hypergradient search from ``s_prev``) or ``loocv``
    (closed form). ``x_pool``: a uniform sample of pool rows, on which the choice also measures
    its ``pool_spread``. ``ev``: a ``(route, evaluator, folds)`` already built for these labels."""
    t0 = time.perf_counter()
    tc = tc or tune_config(config)
    if len(x) < 2:
        raise UserError("choosing s needs at least 2 labels: give a number with --s for now")
    s0 = float(s_prev) if s_prev is not None else tc.s_init
    if mode == "loocv":
        return _choose_loocv(config, x, y, tc, s0, t0, x_pool)
    route = ev[0] if ev else route_for(cv_routes.COMPILED.get(config).problem, tc)
    if route == "grid":
        return choose_grid(config, x, y, tc=tc, x_pool=x_pool, warm=warm)
    route, ev_, k = ev or evaluator(config, x, y, tc, params, tangent)
    res = hyper.minimize_log_s(
        ev_, s0, tc.s_min, tc.s_max, tol=tc.tol, max_evals=tc.max_evals, flat=tc.flat
    )
    exact = route == "exact"
    return Choice(
        s=res.s,
        mode="auto",
        cv_loss=res.loss,
        folds=k,
        route=route,
        s_start=s0,
        evaluations=res.evaluations,
        stop=res.stop,
        seconds=time.perf_counter() - t0,
        spread=ev_.spread(res.s, x_pool) if exact and x_pool is not None else None,
        row_loss=ev_.row_losses(res.s) if exact else None,
    )


# --- how much a fit's predictions vary over the pool ----------------------------------------------


def pool_spread(config: RunConfig, x, y, s: float, x_pool) -> float:
    """The variance of a linear or poly model's predictions (fitted exactly at s on every label)
    over the rows ``x_pool``, divided by the variance of the labels.

    The conditional mean E[y|x] never varies more than y does (Var E[y|x] ≤ Var y), so a fit whose
    predictions on the pool vary more than its labels is extrapolating: ``choose_model`` uses it
    against polynomials that cross-validate well on a few labels and run wild between or beyond
    them."""
    compiled, data = cv_routes.setup(config, x, y)
    if not hyper.is_linear(compiled.problem):
        raise ValueError(
            "pool_spread solves linear or poly models exactly; the grid reports its MLP's own"
        )
    ones = np.ones((1, len(x)), np.float32)
    return cv_routes.ExactCV(compiled, data, ones).spread(s, x_pool)


def _variance_ratio(pred: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Variance of ``pred`` over its rows (mean over leading axes) over the sample variance of the
    positive-weight labels (first output)."""
    labels = np.asarray(y, np.float64).reshape(len(y), -1)[np.asarray(w) > 0, 0]
    count = max(labels.size, 2)
    var_y = np.sum((labels - labels.mean()) ** 2) / (count - 1.0) if labels.size else 0.0
    var_pred = np.mean(np.var(np.asarray(pred, np.float64)[..., 0], axis=-1))
    return float(var_pred / max(var_y, 1e-300))


GRID_S = (
    0.1,
    0.3,
    1.0,
    3.0,
    10.0,
    30.0,
)  # the s a grid search tries (the MLP in --model auto; docs/results.md)
GRID_STEPS = 1000  # steps of each grid training, from the model's initial parameters
GRID_WARM_STEPS = (
    250  # steps of each grid training warm-started from the last round's (``choose_grid``)
)
# rows per step: full batch up to 256 labels, minibatches above (the cost stops growing with the
# labels)
GRID_BATCH = 256


def grid_padding(n: int) -> int:
    """Rows a grid search pads n labels to: a multiple of 32, at least 64, so few sizes compile and
    little work goes to padding (powers of two trained up to twice the rows needed)."""
    return max(64, -(-n // 32) * 32)


def choose_grid(
    config: RunConfig,
    x,
    y,
    *,
    tc: TuneConfig | None = None,
    grid=GRID_S,
    steps: int = GRID_STEPS,
    x_pool=None,
    warm: GridWarm | None = None,
) -> Choice:
    """The s of ``grid`` with the lowest k-fold CV loss, every (fold, s) trained at once from the
    initial parameters, or from the last round's trainings (``warm``) for GRID_WARM_STEPS steps.

    For models whose hypergradient search is erratic on few labels (the MLP: docs/choosing-s.md): no
    warm start from a fit that saw the held-out rows, no search path, the same folds as
    ``evaluator``. Rows are padded with weight-0 rows to ``grid_padding(n)``, so XLA compiles once
    per size; each training takes ``steps`` steps of at most GRID_BATCH rows, so its cost stops
    growing with the labels. With ``x_pool``, the choice's ``spread`` is ``pool_spread``'s measure
    from the chosen s's fold trainings.

    ``warm``: the previous round's ``Choice.grid_state``. The folds are stable as labels are
    appended (``hyper.fold_of_rows``), so fold j's last training saw none of fold j's held-out rows,
    old or new: starting there leaks nothing, and a quarter of the steps reach the same CV loss
    (docs/results.md, "A simulation fast enough to decide"). Used when it ``fits`` these labels.
    """
    t0 = time.perf_counter()
    tc = tc or tune_config(config)
    n = len(x)
    if n < 2:
        raise UserError("choosing s needs at least 2 labels: give a number with --s for now")
    compiled, data = cv_routes.setup(config, x, y)
    k = n_folds(n, tc)
    n_pad = grid_padding(n)
    pad = lambda a: np.concatenate([a, np.repeat(a[:1], n_pad - n, axis=0)])  # noqa: E731
    w = np.concatenate([np.asarray(data.w), np.zeros(n_pad - n, np.float32)])
    padded = Data(
        jnp.asarray(pad(np.asarray(data.x))), jnp.asarray(pad(np.asarray(data.y))), jnp.asarray(w)
    )
    masks = np.zeros((k, n_pad), np.float32)
    masks[:, :n] = hyper.fold_masks(n, k, tc.seed)
    grid = np.asarray(grid, np.float64)
    weights = np.repeat(masks, len(grid), axis=0) * w[None, :]
    s_all = np.tile(grid, k).astype(np.float32)
    warm = warm if warm is not None and warm.fits(x, y, k, grid) else None
    train, held_out, held_rows, predict = compiled.grid_functions(
        config, n_pad, GRID_WARM_STEPS if warm else steps, min(n_pad, GRID_BATCH), warm is not None
    )
    # every s of fold j starts from fold j's training at the last chosen s (a homotopy in s: a start
    # that collapsed under a large s would stay there, one fitted at the chosen s does not)
    start = (
        compiled.init
        if warm is None
        else jax.tree_util.tree_map(lambda a: jnp.repeat(a, len(grid), axis=0), warm.params)
    )
    params = train(start, padded, jnp.asarray(weights), jnp.asarray(s_all))
    loss = np.asarray(
        held_out(params, padded, jnp.asarray(np.repeat(masks, len(grid), axis=0))), np.float64
    )
    cv = loss.reshape(k, len(grid)).sum(axis=0) / max(n, 1)
    i = int(np.argmin(np.where(np.isfinite(cv), cv, np.inf)))
    evals = tuple(hyper.Evaluation(float(s), float(v), float("nan")) for s, v in zip(grid, cv))
    # the chosen s's k fold trainings (index fold·len(grid) + i)
    chosen = jax.tree_util.tree_map(lambda a: a[i :: len(grid)], params)
    rows = np.asarray(held_rows(chosen, padded, jnp.asarray(masks)), np.float64)[:n]
    spread = None
    if x_pool is not None:
        pred = predict(chosen, jnp.asarray(x_pool, jnp.float32))
        spread = _variance_ratio(np.asarray(pred), np.asarray(data.y), np.asarray(data.w))
    return Choice(
        s=float(grid[i]),
        mode="grid",
        cv_loss=float(cv[i]),
        folds=k,
        route="grid",
        s_start=float(grid[0]),
        evaluations=evals,
        stop="grid, warm start" if warm else "grid",
        seconds=time.perf_counter() - t0,
        spread=spread,
        row_loss=rows,
        grid_state=GridWarm(n, k, tuple(float(s) for s in grid), label_fingerprint(x, y), chosen),
    )


def _choose_loocv(config, x, y, tc: TuneConfig, s0: float, t0: float, x_pool=None) -> Choice:
    """Global minimum of closed-form LOOCV on a log grid, refined between its grid neighbours."""
    compiled, data = cv_routes.setup(config, x, y)
    if not hyper.is_linear(compiled.problem):
        raise UserError(
            "--s loocv needs a linear or poly model with the squared loss: use --s auto"
        )
    ev = cv_routes.ExactCV(compiled, data, np.ones((1, len(x)), np.float32))  # masks unused here
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
    evals = tuple(hyper.Evaluation(float(s), float(v), float("nan")) for s, v in zip(grid, loss))
    return Choice(
        s=res.s,
        mode="loocv",
        cv_loss=res.loss,
        folds=len(x),
        route="closed-form",
        s_start=s0,
        evaluations=evals + res.evaluations,
        stop=res.stop,
        seconds=time.perf_counter() - t0,
        spread=None if x_pool is None else ev.spread(res.s, x_pool),
        row_loss=ev.loo_rows(res.s),
    )


def resolve_s(
    config: RunConfig,
    x,
    y,
    *,
    s_prev: float | None = None,
    params=None,
    tangent=None,
    x_pool=None,
    warm: GridWarm | None = None,
) -> tuple[float, Choice | None]:
    """The numeric s to train with: the config's number, or the value chosen now for its mode
    (``x_pool``, ``warm``: see ``choose_s``, ``choose_grid``)."""
    config = as_config(config)
    if not is_mode(config.s):
        return float(config.s), None
    choice = choose_s(
        config,
        x,
        y,
        mode=config.s,
        s_prev=s_prev,
        params=params,
        tangent=tangent,
        x_pool=x_pool,
        warm=warm,
    )
    return choice.s, choice


def log_grid(s_min: float, s_max: float, per_decade: int) -> np.ndarray:
    decades = math.log10(s_max / s_min)
    return np.logspace(
        math.log10(s_min), math.log10(s_max), max(int(round(decades * per_decade)) + 1, 2)
    )
