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


def outputs(problem: Problem, params, x) -> jax.Array:
    """Model outputs, linearized at sg(θ) under Gauss-Newton curvature (same value, same gradient)."""
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
    sq = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p0)))
    return 0.5 * problem.damping * sq


def batch_objective(problem: Problem, params, s, batch: Data, n_total) -> jax.Array:
    """Unbiased minibatch estimate of f(θ, s) / n: mean_B(w L) + (s / n) R(θ) (+ damping)."""
    losses = problem.loss.per_example(outputs(problem, params, batch.x), batch.y)
    data_term = jnp.mean(batch.w * losses)
    return data_term + (s / n_total) * problem.reg.value(params) + _damping_term(problem, params)


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


def default_curvature(model_kind: str) -> tuple[str, float]:
    """(curvature, damping) used for a model kind unless the run says otherwise."""
    if model_kind == "mlp":
        return "gauss-newton", 0.0
    return "hessian", 0.0
