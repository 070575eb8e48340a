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
    return float(jax.jit(lambda p, t, s_, d: _residual(problem, p, t, s_, d))(params, tangent, s, data))


def _residual(problem, params, tangent, s, data):
    rho = ravel_pytree(mixed_derivative(problem, params, s, data))[0]
    hv = ravel_pytree(hvp(problem, params, s, data, tangent))[0]
    return jnp.linalg.norm(hv + rho) / jnp.maximum(jnp.linalg.norm(rho), jnp.finfo(rho.dtype).tiny)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


def _promote(problem: Problem, params, s, data: Data, dtype):
    stats = _cast(problem.stats, dtype)
    return problem._replace(stats=stats), _cast(params, dtype), jnp.asarray(s, dtype), _cast(data, dtype)


def exact(problem: Problem, params, s, data: Data, x64: bool = True) -> TangentResult:
    """Solve H θ̇ = −ρ with the dense Hessian (p up to a few thousand); minimum-norm where H is singular."""
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        prob, p, s_, d = _promote(problem, params, s, data, dtype)
        flat, unravel = ravel_pytree(p)

        @jax.jit  # one compilation instead of op-by-op dispatch (seconds even for tiny models)
        def solve(flat, s_, d):
            g = lambda f: ravel_pytree(gradient(prob, unravel(f), s_, d))[0]  # noqa: E731
            hess = jax.jacfwd(g)(flat)
            rho = ravel_pytree(mixed_derivative(prob, unravel(flat), s_, d))[0]
            # least squares: the minimum-norm solution where H is singular along directions that neither
            # the loss nor R sees (softmax: the same shift of every class's bias); otherwise the solve itself
            sol = jnp.linalg.lstsq(hess, -rho)[0]
            return sol, _residual(prob, unravel(flat), unravel(sol), s_, d)

        sol, res = solve(flat, s_, d)
        tangent, res = unravel(sol), float(res)
        out = _cast(tangent, jnp.float32)
    return TangentResult(jax.tree_util.tree_map(np.asarray, out), res, 1)


def cg(problem: Problem, params, s, data: Data, x0=None, tol: float = 1e-10, maxiter: int = 1000, x64: bool = True) -> TangentResult:
    """Conjugate gradients on H θ̇ = −ρ with Hessian-vector products (needs H positive definite)."""
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        prob, p, s_, d = _promote(problem, params, s, data, dtype)
        rho = mixed_derivative(prob, p, s_, d)
        b = jax.tree_util.tree_map(lambda r: -r, rho)
        x0_ = None if x0 is None else _cast(x0, dtype)
        sol, iters = _cg_solve(lambda v: hvp(prob, p, s_, d, v), b, x0_, tol, maxiter)
        res = float(_residual(prob, p, sol, s_, d))
        out = _cast(sol, jnp.float32)
    return TangentResult(jax.tree_util.tree_map(np.asarray, out), res, int(iters))


def _cg_solve(matvec, b, x0, tol, maxiter):
    """Plain CG on pytrees; returns the solution and the number of iterations taken."""
    fb, unravel = ravel_pytree(b)
    mv = jax.jit(lambda v: ravel_pytree(matvec(unravel(v)))[0])
    x = jnp.zeros_like(fb) if x0 is None else ravel_pytree(x0)[0]
    r = fb - mv(x)
    p_ = r
    rs = jnp.vdot(r, r)
    bnorm = jnp.linalg.norm(fb)
    it = 0
    for it in range(1, maxiter + 1):
        ap = mv(p_)
        curv = jnp.vdot(p_, ap)
        if not bool(curv > 0):  # negative or zero curvature: CG is undefined here
            break
        alpha = rs / curv
        x = x + alpha * p_
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        if bool(jnp.sqrt(rs_new) <= tol * bnorm):
            break
        p_ = r + (rs_new / rs) * p_
        rs = rs_new
    return unravel(x), it


def lissa(problem: Problem, params, s, data: Data, batch_idx, lr: float, tangent=None) -> list:
    """SGDF's tangent iteration with θ frozen: θ̇ ← θ̇ − η (H_B θ̇ + ρ_B) over the given minibatches.

    This is LiSSA with a step size (paper §3.6): with h = −θ̇/η it reads h ← ρ_B + (I − ηH_B) h.
    Returns the tangent after every step.
    """
    from alloop.core import sgdf  # local: sgdf does not depend on this module

    opt = optax.sgd(lr)
    state = sgdf.init_state(params, opt, tangent)
    n = int(data.x.shape[0])
    step = jax.jit(lambda st, b: sgdf._sgdf_step(problem, opt, n, st, Data(data.x[b], data.y[b], data.w[b]), s)[0])
    out = []
    for b in np.asarray(batch_idx):
        state = step(state, jnp.asarray(b))._replace(params=state.params)
        out.append(jax.tree_util.tree_map(np.asarray, state.tangent))
    return out
