"""Regularity tangents θ̇ = dθ*/ds = −H⁻¹ρ computed after training, and their health figure.

All functions work on the whole labeled set (full batch) with f / n, which leaves θ̇ unchanged.
``exact`` forms the dense Hessian (small p only); ``cg`` uses Hessian-vector products. Both can run
in float64 (``x64=True``), which method.md recommends for reference solutions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from alloop.core.objective import Data, Problem, full_objective


class TangentResult(NamedTuple):
    tangent: object
    residual: float  # ||H θ̇ + ρ|| / ||ρ|| on the labeled set
    iterations: int


def gradient(problem: Problem, params, s, data: Data):
    """∇θ (f / n)."""
    return jax.grad(full_objective, argnums=1)(problem, params, s, data)


def mixed_derivative(problem: Problem, params, s, data: Data):
    """∂²(f/n)/∂θ∂s = ρ / n, as the forward derivative of the gradient in s."""
    s = jnp.asarray(s, jnp.result_type(float))
    return jax.jvp(lambda t: gradient(problem, params, t, data), (s,), (jnp.ones_like(s),))[1]


def hvp(problem: Problem, params, s, data: Data, v):
    """H v, forward-over-reverse."""
    return jax.jvp(lambda p: gradient(problem, p, s, data), (params,), (v,))[1]


def relative_residual(problem: Problem, params, tangent, s, data: Data) -> float:
    """||H θ̇ + ρ|| / ||ρ||: 0 for the exact tangent, 1 for θ̇ = 0."""
    return float(
        jax.jit(lambda p, t, s_, d: _residual(problem, p, t, s_, d))(params, tangent, s, data)
    )


def _residual(problem, params, tangent, s, data):
    rho = ravel_pytree(mixed_derivative(problem, params, s, data))[0]
    hv = ravel_pytree(hvp(problem, params, s, data, tangent))[0]
    return jnp.linalg.norm(hv + rho) / jnp.maximum(jnp.linalg.norm(rho), jnp.finfo(rho.dtype).tiny)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: (
            jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
        ),
        tree,
    )


def _promote(problem: Problem, params, s, data: Data, dtype):
    stats = _cast(problem.stats, dtype)
    return (
        problem._replace(stats=stats),
        _cast(params, dtype),
        jnp.asarray(s, dtype),
        _cast(data, dtype),
    )


def exact(problem: Problem, params, s, data: Data, x64: bool = True) -> TangentResult:
    """Solve H θ̇ = −ρ with the dense Hessian (p up to a few thousand); minimum-norm where H is
    singular."""
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        prob, p, s_, d = _promote(problem, params, s, data, dtype)
        flat, unravel = ravel_pytree(p)

        @jax.jit  # one compilation instead of op-by-op dispatch (seconds even for tiny models)
        def solve(flat, s_, d):
            g = lambda f: ravel_pytree(gradient(prob, unravel(f), s_, d))[0]  # noqa: E731
            hess = jax.jacfwd(g)(flat)
            rho = ravel_pytree(mixed_derivative(prob, unravel(flat), s_, d))[0]
            # least squares: the minimum-norm solution where H is singular along directions that
            # neither the loss nor R sees (softmax: the same shift of every class's bias); otherwise
            # the solve itself
            sol = jnp.linalg.lstsq(hess, -rho)[0]
            return sol, _residual(prob, unravel(flat), unravel(sol), s_, d)

        sol, res = solve(flat, s_, d)
        tangent, res = unravel(sol), float(res)
        out = _cast(tangent, jnp.float32)
    return TangentResult(jax.tree_util.tree_map(np.asarray, out), res, 1)


def cg(
    problem: Problem,
    params,
    s,
    data: Data,
    x0=None,
    tol: float = 1e-10,
    maxiter: int = 1000,
    x64: bool = True,
) -> TangentResult:
    """Conjugate gradients on H θ̇ = −ρ with Hessian-vector products (needs H positive definite)."""
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        prob, p, s_, d = _promote(problem, params, s, data, dtype)
        flat, unravel = ravel_pytree(p)
        x0_ = jnp.zeros_like(flat) if x0 is None else ravel_pytree(_cast(x0, dtype))[0]

        # θ, s and the data are arguments: baked in as constants XLA would fold them, slowly
        @jax.jit
        def solve(flat, s_, d, x0):
            b = -ravel_pytree(mixed_derivative(prob, unravel(flat), s_, d))[0]
            mv = lambda v: ravel_pytree(hvp(prob, unravel(flat), s_, d, unravel(v)))[0]  # noqa: E731
            sol, iters = cg_loop(mv, b, x0, tol, maxiter)
            return sol, iters, _residual(prob, unravel(flat), unravel(sol), s_, d)

        sol, iters, res = solve(flat, s_, d, x0_)
        out = _cast(unravel(sol), jnp.float32)
    return TangentResult(jax.tree_util.tree_map(np.asarray, out), float(res), int(iters))


def cg_loop(matvec, b, x0, tol: float, maxiter: int):
    """Plain CG on flat vectors as one ``lax.while_loop`` (traceable: call it inside jit).

    Stops when ||r|| <= tol ||b||, after ``maxiter`` iterations, or at the first direction of zero
    or negative curvature (where CG is undefined; the iterate before it is returned). Returns the
    solution and the number of iterations taken (the one that stopped it included).
    """
    bnorm = jnp.linalg.norm(b)
    r = b - matvec(x0)

    def cond(c):
        _, _, _, _, it, done = c
        return (it < maxiter) & ~done

    def body(c):
        x, r, p_, rs, it, _ = c
        ap = matvec(p_)
        curv = jnp.vdot(p_, ap)
        bad = ~(curv > 0)
        alpha = jnp.where(bad, 0.0, rs / jnp.where(bad, 1.0, curv))
        x, r = x + alpha * p_, r - alpha * ap
        rs_new = jnp.vdot(r, r)
        done = bad | (jnp.sqrt(rs_new) <= tol * bnorm)
        p_ = r + (rs_new / jnp.where(rs > 0, rs, 1.0)) * p_
        return x, r, p_, rs_new, it + 1, done

    x, *_, it, _ = jax.lax.while_loop(
        cond, body, (x0, r, r, jnp.vdot(r, r), jnp.int32(0), jnp.bool_(False))
    )
    return x, it


def lissa(problem: Problem, params, s, data: Data, batch_idx, lr: float, tangent=None) -> list:
    """SGDF's tangent iteration with θ frozen: θ̇ ← θ̇ − η (H_B θ̇ + ρ_B) over the given
    minibatches.

    This is LiSSA with a step size (paper §3.6): with h = −θ̇/η it reads h ← ρ_B + (I − ηH_B) h.
    Returns the tangent after every step.
    """
    from alloop.core import sgdf  # local: sgdf does not depend on this module

    opt = optax.sgd(lr)
    state = sgdf.init_state(params, opt, tangent)
    n = int(data.x.shape[0])
    step = jax.jit(
        lambda st, b: sgdf.sgdf_step(problem, opt, n, st, Data(data.x[b], data.y[b], data.w[b]), s)[
            0
        ]
    )
    out = []
    for b in np.asarray(batch_idx):
        state = step(state, jnp.asarray(b))._replace(params=state.params)
        out.append(jax.tree_util.tree_map(np.asarray, state.tangent))
    return out
