"""The training objective f(θ, s) = Σ_i w_i L(z_i, θ) + s R(θ) and its curvature choices.

Code minimizes f / n for numerical scale; θ*(s), and so θ̇ = dθ*/ds, are unchanged by that.

Curvature. The tangent solves H θ̇ = −ρ where H is the second derivative of the objective. Two
choices are offered, both with the same value and gradient (so training is unaffected):

- ``"hessian"``: the true Hessian.
- ``"gauss-newton"``: Jᵀ H_L J + s ∇²R, positive semi-definite for convex losses. Obtained by
  evaluating the loss on the model's linearization at a stop-gradient copy of θ, which has the
  same value and gradient as the model but no second derivative of its own.

``damping`` λ adds λ ||θ − sg(θ)||² / 2 to f / n: zero value and gradient, curvature + λI.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alloop.core.losses import Loss
from alloop.core.models import Model, Standardizer
from alloop.core.regularizers import Regularizer


class Problem(NamedTuple):
    """What is being fitted: model, loss, regularizer, input statistics and curvature choice."""

    model: Model
    loss: Loss
    reg: Regularizer
    stats: Standardizer
    curvature: str = "hessian"
    damping: float = 0.0


class Data(NamedTuple):
    """Labeled rows with per-row weights w_i (1 by default)."""

    x: jax.Array
    y: jax.Array
    w: jax.Array


def make_data(x, y, w=None) -> Data:
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y)
    if y.dtype.kind == "f":
        y = y.astype(jnp.float32)
    w = jnp.ones((x.shape[0],), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)
    return Data(x, y, w)


def default_curvature(model_kind: str) -> tuple[str, float]:
    """(curvature, damping) for a model kind. Models linear in θ: the Hessian, undamped.

    MLPs: damped Gauss-Newton, chosen from the measurements in docs/curvature.md. Trained MLPs sit
    at points of negative curvature (CG on the Hessian breaks down, SGDF cannot find its tangent);
    the Gauss-Newton matrix is positive semi-definite but singular with L2 on the weights only, and
    λ = 3e-3 (in units of f/n, targets standardized) makes it definite while the SLD ranking stays
    as close to the undamped one as SGDF gets anyway; SGDF then ends within a residual of 0.5.
    """
    if model_kind in ("linear", "poly"):
        return "hessian", 0.0
    if model_kind == "mlp":
        return "gauss-newton", 3e-3
    raise ValueError(f"unknown model kind {model_kind!r}")


def outputs(problem: Problem, params, x) -> jax.Array:
    """Model outputs, linearized at sg(θ) under Gauss-Newton curvature (same value, same
    gradient)."""
    apply = lambda p: problem.model.apply(p, problem.stats, x)  # noqa: E731
    if problem.curvature == "hessian":
        return apply(params)
    if problem.curvature == "gauss-newton":
        p0 = jax.lax.stop_gradient(params)
        delta = jax.tree_util.tree_map(lambda a, b: a - b, params, p0)
        out0, dout = jax.jvp(apply, (p0,), (delta,))
        return out0 + dout
    raise ValueError(f"unknown curvature {problem.curvature!r}")


def _damping_term(problem: Problem, params) -> jax.Array:
    if not problem.damping:
        return jnp.zeros(())
    p0 = jax.lax.stop_gradient(params)
    sq = sum(
        jnp.sum((a - b) ** 2)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p0))
    )
    return 0.5 * problem.damping * sq


def batch_objective(problem: Problem, params, s, batch: Data, n_total) -> jax.Array:
    """Unbiased minibatch estimate of f(θ, s) / n: mean_B(w L) + (s / n) R(θ) (+ damping)."""
    losses = problem.loss.per_example(outputs(problem, params, batch.x), batch.y)
    data_term = jnp.mean(batch.w * losses)
    return data_term + (s / n_total) * problem.reg.value(params, s) + _damping_term(problem, params)


def value_and_grad(problem: Problem, params, s, batch: Data, n_total):
    """(f_B / n, its gradient), with the true model: the curvature choice changes neither."""
    plain = problem._replace(curvature="hessian", damping=0.0)
    return jax.value_and_grad(batch_objective, argnums=1)(plain, params, s, batch, n_total)


def grad_and_tangent(problem: Problem, params, tangent, s, ds, batch: Data, n_total):
    """(f_B / n, g = its gradient, ġ = C θ̇ + ds ρ_B / n): the gradient and its derivative along
    (θ̇, ds).

    C is the problem's curvature on the batch, damping included. This is the forward derivative of
    ``value_and_grad``, computed in one pass. Under Gauss-Newton it is built from one linearization
    of the model: u = J θ̇ forward, then Jᵀ applied to the output gradient and to H_L u together,
    which costs about 7 matrix products per layer where differentiating the linearized objective
    twice costs 9 (and a plain step 3).
    """
    ds = jnp.asarray(ds, jnp.result_type(s))
    if problem.curvature == "hessian":
        vg = lambda p, s_: value_and_grad(problem, p, s_, batch, n_total)  # noqa: E731
        (loss, g), (_, gdot) = jax.jvp(vg, (params, s), (tangent, ds))
    elif problem.curvature == "gauss-newton":
        loss, g, gdot = _gauss_newton_grad_and_tangent(
            problem, params, tangent, s, ds, batch, n_total
        )
    else:
        raise ValueError(f"unknown curvature {problem.curvature!r}")
    if problem.damping:
        gdot = jax.tree_util.tree_map(lambda a, t: a + problem.damping * t, gdot, tangent)
    return loss, g, gdot


def _gauss_newton_grad_and_tangent(problem, params, tangent, s, ds, batch, n_total):
    apply = lambda p: problem.model.apply(p, problem.stats, batch.x)  # noqa: E731
    data_term = lambda out: jnp.mean(batch.w * problem.loss.per_example(out, batch.y))  # noqa: E731
    out, lin = jax.linearize(apply, params)
    data_loss, dout = jax.value_and_grad(data_term)(out)
    hu = jax.jvp(jax.grad(data_term), (out,), (lin(tangent),))[1]  # H_L J θ̇
    back = jax.linear_transpose(lin, params)
    both = jax.vmap(lambda c: back(c)[0])(jnp.stack([dout, hu]))  # Jᵀ on both at once
    g_data, gdot_data = (jax.tree_util.tree_map(lambda a, i=i: a[i], both) for i in (0, 1))
    reg = lambda p, s_: (s_ / n_total) * problem.reg.value(p, s_)  # noqa: E731
    (reg_val, g_reg), (_, gdot_reg) = jax.jvp(jax.value_and_grad(reg), (params, s), (tangent, ds))
    add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)  # noqa: E731
    return data_loss + reg_val, add(g_data, g_reg), add(gdot_data, gdot_reg)


def full_objective(problem: Problem, params, s, data: Data) -> jax.Array:
    """f(θ, s) / n on the whole labeled set."""
    return batch_objective(problem, params, s, data, data.x.shape[0])


def total_objective(problem: Problem, params, s, data: Data) -> jax.Array:
    """The paper's unnormalized f(θ, s) = Σ w_i L_i + s R(θ)."""
    return full_objective(problem, params, s, data) * data.x.shape[0]


def per_example_loss(problem: Problem, params, x, y) -> jax.Array:
    """L(z_i, θ) for each row, with the true model (never linearized)."""
    return problem.loss.per_example(problem.model.apply(params, problem.stats, x), y)


Params = Any
