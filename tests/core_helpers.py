"""Independent references for the core tests: closed forms and a float64 L-BFGS minimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers


def ridge_problem(rng, n=200, d=4, k=1):
    """A linear model with bias, raw inputs (no standardization), L2 on the weights only."""
    x = (rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d)).astype(np.float32)
    y = (x @ rng.normal(size=(d, k)) + 0.5 + 0.3 * rng.normal(size=(n, k))).astype(np.float32)
    model = models.linear(d, k)
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(model.init(None)),
        models.identity_standardizer(d),
    )
    return prob, objective.make_data(x, y)


def ridge_closed_form(data, s):
    """θ* = (AᵀA + sD)⁻¹Aᵀy and θ̇ = −(AᵀA + sD)⁻¹Dθ* with A = [X, 1], D = diag(1, …, 1, 0)."""
    x = np.asarray(data.x, np.float64)
    y = np.asarray(data.y, np.float64)
    a = np.c_[x, np.ones(len(x))]
    dmat = np.diag([1.0] * x.shape[1] + [0.0])
    m = a.T @ a + s * dmat
    theta = np.linalg.solve(m, a.T @ y)
    tdot = -np.linalg.solve(m, dmat @ theta)
    return theta, tdot


def flat_linear(tree) -> np.ndarray:
    """[w; b] flattened per output, matching ridge_closed_form's layout."""
    return np.r_[
        np.asarray(tree["w"], np.float64), np.asarray(tree["b"], np.float64)[None, :]
    ].ravel()


def cosine(a, b) -> float:
    """The cosine of the angle between a and b; 0 when either is zero (a zero vector agrees with
    nothing)."""
    a, b = np.ravel(a), np.ravel(b)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else 0.0


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def minimize64(problem, data, s, params0, tol=1e-11, maxiter=5000):
    """Full-batch L-BFGS on f/n in float64 to a tight gradient tolerance; returns float64 params."""
    with jax.enable_x64(True):
        cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        prob = problem._replace(stats=cast(problem.stats))
        d = objective.Data(cast(data.x), cast(data.y), cast(data.w))
        flat0, unravel = ravel_pytree(cast(params0))
        fun = jax.jit(lambda f: objective.full_objective(prob, unravel(f), jnp.float64(s), d))
        opt = optax.lbfgs()
        state = opt.init(flat0)
        vg = optax.value_and_grad_from_state(fun)
        x = flat0

        @jax.jit
        def step(x, state):
            v, g = vg(x, state=state)
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=fun)
            return optax.apply_updates(x, u), state, jnp.linalg.norm(g)

        for _ in range(maxiter):
            x, state, gn = step(x, state)
            if float(gn) < tol:
                break
        return jax.tree_util.tree_map(np.asarray, unravel(x)), float(gn)
