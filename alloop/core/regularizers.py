"""Regularizers R(θ) and the complexity gradient ρ = ∂R/∂θ (method.md)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from alloop.core.models import weight_mask


class Regularizer(NamedTuple):
    """A complexity measure R(θ); the objective weighs it by the regularity s."""

    name: str
    value: Callable[[Any], jax.Array]


def _sum_tree(tree) -> jax.Array:
    return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def l2(mask) -> Regularizer:
    """R(θ) = ||θ_M||², the squared norm of the coordinates where ``mask`` is 1."""
    return Regularizer("l2", lambda p: _sum_tree(jax.tree_util.tree_map(lambda m, x: m * x**2, mask, p)))


def l2_weights(params) -> Regularizer:
    """L2 on the weights only (biases free): the usual default."""
    return l2(weight_mask(params))


def anchor(theta0) -> Regularizer:
    """R(θ) = ||θ − θ0||²: parameter inheritance from a base model (paper §3.4.1)."""
    return Regularizer("anchor", lambda p: _sum_tree(jax.tree_util.tree_map(lambda x, x0: (x - x0) ** 2, p, theta0)))


def complexity_gradient(reg: Regularizer, params):
    """ρ = ∂²f/∂θ∂s = ∂R/∂θ, by autodiff (no per-regularizer formula)."""
    return jax.grad(reg.value)(params)
