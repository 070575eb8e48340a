"""Regularizers R(θ) and the complexity gradient ρ = ∂R/∂θ (method.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from alloop.core.models import weight_mask


class Regularizer(NamedTuple):
    """A complexity measure R(θ) (or R(θ, s)); the objective weighs it by the regularity s.

    ``value(params, s=None)``: every regularizer accepts s; only ``inherited_anchor`` uses it.
    """

    name: str
    value: Callable[..., jax.Array]


def _sum_tree(tree) -> jax.Array:
    return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def l2(mask) -> Regularizer:
    """R(θ) = ||θ_M||², the squared norm of the coordinates where ``mask`` is 1."""
    return Regularizer(
        "l2", lambda p, s=None: _sum_tree(jax.tree_util.tree_map(lambda m, x: m * x**2, mask, p))
    )


def l2_weights(params) -> Regularizer:
    """L2 on the weights only (biases free): the usual default."""
    return l2(weight_mask(params))


def anchor(theta0) -> Regularizer:
    """R(θ) = ||θ − θ0||²: parameter inheritance from a base model (paper §3.4.1)."""
    return Regularizer(
        "anchor",
        lambda p, s=None: _sum_tree(jax.tree_util.tree_map(lambda x, x0: (x - x0) ** 2, p, theta0)),
    )


def inherited_anchor(theta0, theta0_dot, s0: float) -> Regularizer:
    """R(θ, s) = ||θ − θ0(s)||² with θ0(s) = θ0 + (s − s0) θ̇0: a base model's optimum that moves with s.

    The base model θ0 was trained at the same regularity s0 and its own tangent θ̇0 = dθ0/ds was
    carried along. Letting the anchor follow s to first order makes every derivative in s of the
    user's problem include dθ/dθ0 · θ̇0 (paper eq. 98) by forward-mode differentiation, without
    forming a Jacobian. At s = s0 the value is the plain anchor's.
    """

    def value(p, s=None):
        shift = 0.0 if s is None else s - s0
        return _sum_tree(
            jax.tree_util.tree_map(
                lambda x, a, da: (x - a - shift * da) ** 2, p, theta0, theta0_dot
            )
        )

    return Regularizer("inherited-anchor", value)


def complexity_gradient(reg: Regularizer, params):
    """ρ = ∂²f/∂θ∂s = ∂R/∂θ, by autodiff (no per-regularizer formula)."""
    return jax.grad(reg.value)(params)
