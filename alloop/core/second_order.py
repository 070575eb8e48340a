"""Full-batch second-order trainers for small labeled sets (paper §3.8), and their exact tangents.

When the labeled set fits in one batch (a single user's few labels, say), a deterministic method
reaches the minimum to tight tolerance, so the tangent solved there is exact up to the solver's
residual. Three methods, all in float64 on the full objective f / n:

- ``newton``: dense Hessian (p up to a few thousand), damped when not positive definite, with a
  backtracking line search;
- ``lbfgs``: optax's L-BFGS with its zoom line search;
- ``cg``: Newton-CG — Newton steps whose systems are solved by conjugate gradients on
  Hessian-vector products (truncated at negative curvature).

The tangent then comes from ``tangents.exact`` (small p) or ``tangents.cg``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from alloop.core import tangents
from alloop.core.objective import Data, Problem, full_objective

EXACT_MAX_PARAMS = 3000


class SecondOrderResult(NamedTuple):
    params: object
    tangent: object
    grad_norm: float  # ||∇(f/n)|| at the returned θ
    iterations: int
    residual: float


def _flat_objective(problem: Problem, data: Data, s, like):
    """f / n of a flat float64 parameter vector, with everything cast to float64."""
    cast = lambda t: jax.tree_util.tree_map(
        lambda a: (
            jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a
        ),
        t,
    )  # noqa: E731
    prob = problem._replace(stats=cast(problem.stats))
    d = cast(data)
    flat, unravel = ravel_pytree(cast(like))
    return jax.jit(lambda f: full_objective(prob, unravel(f), jnp.float64(s), d)), flat, unravel


def _newton(fun, x, tol, maxiter):
    grad = jax.jit(jax.grad(fun))
    hess = jax.jit(jax.hessian(fun))
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        g = grad(x)
        if float(jnp.linalg.norm(g)) < tol:
            break
        h = hess(x)
        lam = 0.0
        while True:  # damp until the step is a descent direction (H positive definite + λI)
            try:
                step = np.linalg.solve(np.asarray(h) + lam * np.eye(len(x)), np.asarray(g))
            except np.linalg.LinAlgError:
                step = None
            if step is not None and float(np.dot(step, np.asarray(g))) > 0:
                break
            lam = max(1e-8, 10 * lam)
        x = _line_search(fun, x, jnp.asarray(step), g)
    return x, it


def _line_search(fun, x, step, g, shrink=0.5, c=1e-4):
    f0, t = float(fun(x)), 1.0
    slope = float(jnp.vdot(g, step))
    for _ in range(40):
        x_new = x - t * step
        if float(fun(x_new)) <= f0 - c * t * slope:
            return x_new
        t *= shrink
    return x - t * step


def _newton_cg(fun, x, tol, maxiter):
    grad = jax.jit(jax.grad(fun))
    hvp = jax.jit(lambda x_, v: jax.jvp(jax.grad(fun), (x_,), (v,))[1])
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        g = grad(x)
        gn = float(jnp.linalg.norm(g))
        if gn < tol:
            break
        step = _truncated_cg(lambda v: hvp(x, v), g, min(0.5, np.sqrt(gn)) * gn, 10 * len(x))  # noqa: B023
        x = _line_search(fun, x, step, g)
    return x, it


def _truncated_cg(matvec, b, tol, maxiter):
    """Approximately solve A d = b; stop at negative curvature (returning the last descent iterate,
    or b)."""
    d = jnp.zeros_like(b)
    r, p = b, b
    rs = jnp.vdot(r, r)
    for _ in range(maxiter):
        ap = matvec(p)
        curv = float(jnp.vdot(p, ap))
        if curv <= 0:
            return d if float(jnp.vdot(d, d)) > 0 else b
        alpha = rs / curv
        d = d + alpha * p
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        if float(jnp.sqrt(rs_new)) < tol:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return d


def _lbfgs(fun, x, tol, maxiter):
    opt = optax.lbfgs()
    state = opt.init(x)
    vg = optax.value_and_grad_from_state(fun)

    @jax.jit
    def step(x, state):
        v, g = vg(x, state=state)
        u, state = opt.update(g, state, x, value=v, grad=g, value_fn=fun)
        return optax.apply_updates(x, u), state, jnp.linalg.norm(g)

    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        x, state, gn = step(x, state)
        if float(gn) < tol:
            break
    return x, it


METHODS = {"newton": _newton, "cg": _newton_cg, "lbfgs": _lbfgs}


def fit(
    problem: Problem,
    data: Data,
    s: float,
    params,
    method: str = "newton",
    tol: float = 1e-9,
    maxiter: int | None = None,
) -> SecondOrderResult:
    """Minimize f / n to ||∇|| < tol with ``method``, then solve the tangent there."""
    if method not in METHODS:
        raise ValueError(f"unknown second-order method {method!r}; choose from {sorted(METHODS)}")
    with jax.enable_x64(True):
        fun, x0, unravel = _flat_objective(problem, data, s, params)
        if method == "newton" and x0.size > EXACT_MAX_PARAMS:
            method = "cg"
        x, iters = METHODS[method](
            fun, x0, tol, maxiter or {"newton": 100, "cg": 200, "lbfgs": 5000}[method]
        )
        gn = float(jnp.linalg.norm(jax.grad(fun)(x)))
        theta = jax.tree_util.tree_map(
            lambda a, like: np.asarray(a, np.asarray(like).dtype), unravel(x), params
        )
    solve = tangents.exact if x0.size <= EXACT_MAX_PARAMS else tangents.cg
    tan = solve(problem, theta, s, data)
    return SecondOrderResult(theta, tan.tangent, gn, iters, tan.residual)
