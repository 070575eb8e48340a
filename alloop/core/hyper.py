"""Choosing the regularity s: hypergradients of a held-out loss, closed-form LOOCV and G_pert.

The cross-validated loss of k folds (paper eq. 21–22), with θ_j*(s) trained on every row but fold
j's,

    CV(s) = (1/n) Σ_j Σ_{z ∈ fold j} L(z, θ_j*(s)),

has the hypergradient dCV/ds = (1/n) Σ_j Σ_{z ∈ fold j} ∇θL(z)·θ̇_j (method.md, "Hyperparameter s"),
θ̇_j = dθ_j*/ds being the regularity tangent of fold j's training. No retraining per candidate s.

A fold's training is written as the whole labeled set with its validation rows weighted 0: the
minimizer of Σ_i m_i w_i L_i + s R is fold j's θ_j*(s) with the *same* s, because s weighs R against
a sum of losses (method.md) and the code's 1/n scale does not move the minimizer. So every fold
has one shape, and all folds train at once under ``jax.vmap``.

Models linear in their parameters with the squared loss (``linear``, ``poly``) are written out
exactly by ``linear_form``: F_i(θ) = J_i θ + F0_i and R(θ) = θᵀDθ + cᵀθ + R0, with J taken by
autodiff *through the model*, so the run's standardizer (the pool's statistics, fixed at init and
not refitted per fold) is inside J exactly as in training. Then θ_j*(s) = M_j⁻¹ b_j with M_j = Σ_i
m_i w_i J_iᵀJ_i + sD, b_j = Σ_i m_i w_i J_iᵀ(y_i − F0_i) − s c/2, and θ̇_j = −M_j⁻¹(Dθ_j + c/2) (the
paper's 87–93 with a bias left free: D has zeros there). For these, LOOCV has a closed form
(``loocv``): the leave-one-out residual of row i is (I − w_i J_i M⁻¹ J_iᵀ)⁻¹ e_i, which for one
output is e_i / (1 − h_ii) with h_ii the diagonal of the hat matrix A(AᵀA + sD)⁻¹Aᵀ.

``g_pert`` is the paper's perturbative LOOCV estimate G_pert (eq. 44) from the dense Hessian, for
any model small enough to form it. ``minimize_log_s`` is the 1-D search on log s that uses the
hypergradient: it brackets a local minimum, then narrows it with secant steps on the derivative.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from alloop.core.objective import Data, Problem, full_objective, per_example_loss

# --- folds -------------------------------------------------------------------------------------


def fold_masks(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """(k, n) training masks: row i is left out (0) of exactly one fold. ``folds >= n`` gives
    LOOCV."""
    k = min(max(int(folds), 2), n)
    if k == n:
        return 1.0 - np.eye(n, dtype=np.float32)
    which = fold_of_rows(n, k, seed)
    return (which[None, :] != np.arange(k)[:, None]).astype(np.float32)


def fold_of_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    """(n,) the fold of each row: rows [bk, (b+1)k) take a random permutation of the k folds, drawn
    from (seed, b). Balanced (fold sizes differ by at most one), and stable as rows are appended:
    the first n rows keep their folds at n + m rows, so a fold's training on them never saw its
    held-out rows and can warm-start the next round's (``choose_s.choose_grid``)."""
    blocks = -(-n // k)
    perms = [np.random.default_rng([seed, b]).permutation(k) for b in range(blocks)]
    return np.concatenate(perms)[:n].astype(np.int64) if perms else np.zeros(0, np.int64)


def validation_masks(masks, w) -> jax.Array:
    """Rows each fold is validated on: those it leaves out, among rows of positive weight."""
    return (1.0 - jnp.asarray(masks)) * (jnp.asarray(w) > 0)


# --- the hypergradient, for any model ------------------------------------------------------------


def val_loss_and_hypergradient(problem: Problem, params, tangent, x, y, v):
    """(Σ_i v_i L(z_i, θ), Σ_i v_i ∇θL(z_i, θ)·θ̇): the held-out loss and its derivative in s
    (sums)."""
    total = lambda p: jnp.sum(v * per_example_loss(problem, p, x, y))  # noqa: E731
    return jax.jvp(total, (params,), (tangent,))


def cv_loss_and_hypergradient(problem: Problem, params, tangents, data: Data, masks):
    """(CV(s), dCV/ds) from per-fold θ_j, θ̇_j stacked on a leading axis, with training ``masks``
    (k, n)."""
    v = validation_masks(masks, data.w)
    per_fold = jax.vmap(val_loss_and_hypergradient, in_axes=(None, 0, 0, None, None, 0))
    loss, dloss = per_fold(problem, params, tangents, data.x, data.y, v)
    count = jnp.maximum(jnp.sum(v), 1.0)
    return jnp.sum(loss) / count, jnp.sum(dloss) / count


# --- models linear in their parameters ----------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["jac", "offset", "dmat", "lin"],
    meta_fields=["unravel"],
)
@dataclass(frozen=True)
class LinearForm:
    """F_i(θ) = J_i θ + F0_i and R(θ) = θᵀDθ + cᵀθ + R0, θ flattened (float64). A pytree: jit takes
    it."""

    jac: jax.Array  # (n, k, p)
    offset: jax.Array  # (n, k)
    dmat: jax.Array  # (p, p)
    lin: jax.Array  # (p,)
    unravel: Callable  # flat θ -> the model's parameter tree


def is_linear(problem: Problem) -> bool:
    """Whether ``linear_form`` is exact: a model linear in θ, the squared loss, a quadratic
    regularizer."""
    return (
        problem.model.name in ("linear", "poly")
        and problem.loss.name == "squared"
        and problem.reg.name in ("l2", "anchor")
    )


def cast(tree, dtype):
    """Floating leaves of ``tree`` as ``dtype`` (integers untouched)."""
    return jax.tree_util.tree_map(
        lambda a: (
            jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
        ),
        tree,
    )


def promote(problem: Problem, tree, dtype=jnp.float64):
    """The problem (its input statistics) and any tree cast to ``dtype``; call under
    ``jax.enable_x64``."""
    return problem._replace(stats=cast(problem.stats, dtype)), cast(tree, dtype)


def linear_form(problem: Problem, params_like, x) -> LinearForm:
    """J, F0, D and c by autodiff through the model and the regularizer. Call under
    ``jax.enable_x64``.

    Works eagerly and inside jit (the autodiff is jitted either way: eager jacobians are slow).
    """
    prob, p0 = promote(problem, params_like)
    flat0, unravel = ravel_pytree(p0)

    @jax.jit
    def parts(zero, x):
        out = lambda f: prob.model.apply(unravel(f), prob.stats, x)  # noqa: E731
        reg = lambda f: prob.reg.value(unravel(f))  # noqa: E731
        return jax.jacfwd(out)(zero), out(zero), 0.5 * jax.hessian(reg)(zero), jax.grad(reg)(zero)

    return LinearForm(*parts(jnp.zeros_like(flat0), jnp.asarray(x, jnp.float64)), unravel)


def _flat_rows(form: LinearForm, y, w):
    n, k, p = form.jac.shape
    jr = form.jac.reshape(n * k, p)
    r = (jnp.asarray(y, jnp.float64).reshape(n, k) - form.offset).reshape(n * k)
    wr = jnp.repeat(jnp.asarray(w, jnp.float64), k)
    return jr, r, wr


def spd_solve(m, b):
    """m⁻¹ b for symmetric positive definite m (batched), by Cholesky: far quicker to compile than
    LU."""
    chol = jnp.linalg.cholesky(m)
    z = jax.lax.linalg.triangular_solve(chol, b, left_side=True, lower=True)
    return jax.lax.linalg.triangular_solve(chol, z, left_side=True, lower=True, transpose_a=True)


@jax.jit
def fold_solutions(form: LinearForm, y, w, masks, s):
    """Exact (θ_j*, θ̇_j) of every fold, flat, shapes (k, p): the normal equations and their
    s-derivative."""
    jr, r, wr = _flat_rows(form, y, w)
    n, k_out, _ = form.jac.shape
    wm = wr[None, :] * jnp.repeat(jnp.asarray(masks, jnp.float64), k_out, axis=1)
    m = jnp.einsum("rp,fr,rq->fpq", jr, wm, jr) + s * form.dmat
    b = jnp.einsum("rp,fr,r->fp", jr, wm, r) - 0.5 * s * form.lin
    theta = spd_solve(m, b[..., None])[..., 0]
    tdot = -spd_solve(m, (theta @ form.dmat.T + 0.5 * form.lin)[..., None])[..., 0]
    return theta, tdot


def exact_cv(problem: Problem, form: LinearForm, data: Data, masks, s):
    """(CV(s), dCV/ds) of a linear model with exact fold solutions. Call under
    ``jax.enable_x64``."""
    prob, d = promote(problem, data)
    theta, tdot = fold_solutions(form, d.y, d.w, masks, s)
    params = jax.vmap(form.unravel)(theta)
    tangents = jax.vmap(form.unravel)(tdot)
    return cv_loss_and_hypergradient(prob, params, tangents, d, masks)


class Loo(NamedTuple):
    loss: jax.Array  # mean over rows of positive weight of ||leave-one-out residual||²
    residuals: jax.Array  # (n, k) leave-one-out residuals y_i − F_{−i}(x_i)
    leverage: jax.Array  # (n,) trace of w_i J_i M⁻¹ J_iᵀ (h_ii for one output)


@jax.jit
def loocv(form: LinearForm, y, w, s) -> Loo:
    """Closed-form LOOCV of a linear model at regularity s (no refitting). Call under
    ``jax.enable_x64``."""
    jr, r, wr = _flat_rows(form, y, w)
    n, k, p = form.jac.shape
    m = jnp.einsum("rp,r,rq->pq", jr, wr, jr) + s * form.dmat
    theta = spd_solve(m, (jr.T @ (wr * r) - 0.5 * s * form.lin)[:, None])[:, 0]
    e = (r - jr @ theta).reshape(n, k)
    minv_jt = spd_solve(m, jr.T).T.reshape(n, k, p)  # rows of J M⁻¹
    w = jnp.asarray(w, jnp.float64)
    lev = w[:, None, None] * jnp.einsum(
        "ikp,ilp->ikl", form.jac, minv_jt
    )  # w_i J_i M⁻¹ J_iᵀ, (n, k, k)
    if k == 1:
        loo = e / (1.0 - lev[:, :, 0])  # e_i / (1 − h_ii)
    else:
        loo = spd_solve(jnp.eye(k) - lev, e[..., None])[..., 0]
    active = w > 0
    loss = jnp.sum(jnp.where(active, jnp.sum(loo**2, axis=1), 0.0)) / jnp.maximum(
        jnp.sum(active), 1
    )
    return Loo(loss, loo, jnp.trace(lev, axis1=1, axis2=2))


@jax.jit
def loocv_and_derivative(form: LinearForm, y, w, s):
    """(LOOCV(s), dLOOCV/ds) by autodiff of the closed form; the reference for the fold
    hypergradient."""
    s = jnp.asarray(s, jnp.float64)
    return jax.jvp(lambda s_: loocv(form, y, w, s_).loss, (s,), (jnp.ones_like(s),))


@jax.jit
def full_solution(form: LinearForm, y, w, s):
    """(θ*, θ̇) on every row, flat."""
    theta, tdot = fold_solutions(form, y, w, jnp.ones((1, form.jac.shape[0])), s)
    return theta[0], tdot[0]


# --- the paper's perturbative estimate, G_pert (eq. 44) -------------------------------------------


class GPert(NamedTuple):
    value: float  # G_pert / n: mean loss + mean self-influence
    loss: float  # mean w_i L(z_i, θ*)
    self_influence: float  # mean w_i σ_iᵀ H⁻¹ σ_i


def g_pert(problem: Problem, params, s, data: Data) -> GPert:
    """G_pert(s) = Σ_j w_j L_j + Σ_j w_j σ_jᵀ H⁻¹ σ_j at θ*(s), per row (dense Hessian: small models
    only).

    H is the Hessian of the unnormalized f = Σ w L + s R under the problem's curvature choice, σ_j
    the gradient of row j's loss. For ridge, σ_jᵀH⁻¹σ_j = 2 e_j² h_jj: G_pert is LOOCV's first order
    in h.
    """
    with jax.enable_x64(True):
        prob, (p, d) = promote(problem, (params, data))
        value, loss, si = jax.jit(lambda p_, s_, d_: g_pert_terms(prob, p_, s_, d_))(
            p, jnp.asarray(s, jnp.float64), d
        )
        return GPert(float(value), float(loss), float(si))


def g_pert_terms(prob: Problem, params, s, data: Data):
    """(G_pert / n, mean loss, mean self-influence) as traceable arrays (same dtype as the
    inputs)."""
    flat, unravel = ravel_pytree(params)
    n = data.x.shape[0]
    grad = lambda f: ravel_pytree(jax.grad(full_objective, argnums=1)(prob, unravel(f), s, data))[0]  # noqa: E731
    hess = n * jax.jacfwd(grad)(flat)  # of f, not f / n
    row_loss = lambda f, x, y: per_example_loss(prob, unravel(f), x[None], y[None])[0]  # noqa: E731
    sig = jax.vmap(jax.grad(row_loss), in_axes=(None, 0, 0))(flat, data.x, data.y)  # (n, p)
    si = data.w * jnp.sum(sig * jnp.linalg.solve(hess, sig.T).T, axis=1)
    losses = data.w * per_example_loss(prob, params, data.x, data.y)
    count = jnp.maximum(jnp.sum(data.w > 0), 1)
    return (jnp.sum(losses) + jnp.sum(si)) / count, jnp.sum(losses) / count, jnp.sum(si) / count


def g_pert_tractable(params, max_params: int = 2000) -> bool:
    """Whether the dense Hessian G_pert needs is small enough to form."""
    return sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(params)) <= max_params


# --- the search on log s --------------------------------------------------------------------------


class Evaluation(NamedTuple):
    s: float
    loss: float
    grad: float  # dCV/d log s = s dCV/ds


class SearchResult(NamedTuple):
    s: float  # the evaluated s with the lowest loss
    loss: float
    evaluations: tuple  # of Evaluation, in order
    stop: str  # "converged" | "bound" | "stationary" | "max_evals"


def minimize_log_s(
    evaluate: Callable[[float], tuple[float, float]],
    s0: float,
    s_min: float = 1e-4,
    s_max: float = 1e5,
    step: float = 1.0,
    tol: float = 0.01,
    max_evals: int = 16,
    flat: float = 1e-3,
) -> SearchResult:
    """Find a local minimum of a loss in s from ``s0`` by gradient steps on u = log s.

    ``evaluate(s) -> (loss, dloss/ds)``. Downhill steps of ``step`` in log s, doubling, until the
    derivative changes sign (or the loss rises), then secant steps on the derivative (Illinois, so
    both ends move) until the bracket is narrower than ``tol`` in log s (s known to about ``tol``).
    Returns, of the points evaluated whose loss is within a fraction ``flat`` of the lowest, the one
    nearest ``s0``: never worse than ``s0`` on the loss it was given, and on a flat curve s stays
    put instead of drifting to a bound for a negligible gain.
    """
    lo, hi = math.log(s_min), math.log(s_max)
    evals: list[Evaluation] = []

    def ev(u: float) -> Evaluation:
        s = math.exp(u)
        loss, ds = evaluate(s)
        evals.append(Evaluation(s, float(loss), float(ds) * s))
        return evals[-1]

    def done(stop: str) -> SearchResult:
        finite = [e for e in evals if math.isfinite(e.loss)] or evals[:1]
        low = min(e.loss for e in finite)
        near = [e for e in finite if e.loss <= low + flat * abs(low)]
        best = min(near, key=lambda e: (abs(math.log(e.s / s0)), e.loss))
        return SearchResult(best.s, best.loss, tuple(evals), stop)

    ua = min(max(math.log(s0), lo), hi)
    a = ev(ua)
    if not math.isfinite(a.grad) or a.grad == 0:
        return done("stationary")
    direction, delta = -math.copysign(1.0, a.grad), step
    while True:  # bracket: walk downhill, doubling the step
        if len(evals) >= max_evals:
            return done("max_evals")
        ub = min(max(ua + direction * delta, lo), hi)
        if ub == ua:
            return done("bound")
        b = ev(ub)
        if b.grad * direction > 0 or b.loss > a.loss or not math.isfinite(b.loss):
            break
        a, ua, delta = b, ub, 2 * delta
    left, right = sorted((a, b), key=lambda e: e.s)
    gl, gr, side = left.grad, right.grad, 0
    while len(evals) < max_evals:  # narrow the bracket: Illinois steps on dL/du (both ends move)
        ul, ur = math.log(left.s), math.log(right.s)
        width = ur - ul
        if width < tol:
            return done("converged")
        mid = ul - gl * width / (gr - gl) if gl < 0 < gr else 0.5 * (ul + ur)
        c = ev(min(max(mid, ul + 0.01 * width), ur - 0.01 * width))
        if c.grad == 0:
            return done("converged")
        if c.grad > 0:
            right, gr = c, c.grad
            gl, side = (gl / 2 if side == 1 else gl), 1
        else:
            left, gl = c, c.grad
            gr, side = (gr / 2 if side == -1 else gr), -1
    return done("max_evals")
