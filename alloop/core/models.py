"""Models as pure ``init``/``apply`` pairs over pytree parameters.

Every model maps a batch of raw feature rows ``x`` of shape (n, d) to outputs of shape (n, k).
Inputs are standardized first with statistics held apart from the trained parameters (they are
computed once from data and never regularized, differentiated or trained).

Parameters are dicts with ``w`` (weights, regularized by default) and ``b`` (biases, not), so a
regularizer mask can be read off the tree by key name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any

ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,  # piecewise linear: its Hessian is zero almost everywhere
}


class Standardizer(NamedTuple):
    """Per-feature centering and scaling, computed once from data."""

    mean: jax.Array
    scale: jax.Array


class Model(NamedTuple):
    """A pure model: ``init(key) -> params`` and ``apply(params, stats, x) -> (n, k) outputs``."""

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, Standardizer, jax.Array], jax.Array]
    n_in: int
    n_out: int


def fit_standardizer(mean, std) -> Standardizer:
    """Build a standardizer from feature moments; constant features get scale 1."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    scale = np.where(std > 1e-12, std, 1.0).astype(np.float32)
    return Standardizer(jnp.asarray(mean), jnp.asarray(scale))


def identity_standardizer(n_in: int) -> Standardizer:
    """A standardizer that leaves inputs as they are."""
    return Standardizer(jnp.zeros((n_in,), jnp.float32), jnp.ones((n_in,), jnp.float32))


def standardize(stats: Standardizer, x: jax.Array) -> jax.Array:
    return (x - stats.mean) / stats.scale


def linear(n_in: int, n_out: int = 1) -> Model:
    """Affine model F(x) = x W + b, initialized at zero (the paper's cold start)."""

    def init(key):
        del key
        return {"w": jnp.zeros((n_in, n_out), jnp.float32), "b": jnp.zeros((n_out,), jnp.float32)}

    def apply(params, stats, x):
        return standardize(stats, x) @ params["w"] + params["b"]

    return Model("linear", init, apply, n_in, n_out)


POLY_CLIP = (
    3.0  # standard deviations of the pool beyond which a poly model's higher powers stop growing
)


def poly_features(z, degree: int, xp=jnp):
    """Per-feature z, z², …, z^degree (no cross terms), the powers from 2 on of z clipped to ±POLY_CLIP.

    Beyond POLY_CLIP pool standard deviations the polynomial goes on as its linear term alone: a cubic
    fitted on the bulk of the pool must not explode on a heavy tail's rows (at 16 sd, z³ is 4,000 and a
    --model auto run's test RMSE went from 5 to 1,630 on a suite table). ``xp``: jax.numpy or numpy.
    """
    c = xp.clip(z, -POLY_CLIP, POLY_CLIP)
    return xp.concatenate([z] + [c**j for j in range(2, degree + 1)], axis=-1)


def poly(n_in: int, n_out: int = 1, degree: int = 3) -> Model:
    """Polynomial of the standardized inputs: an affine map of their powers up to ``degree``."""
    if degree < 1:
        raise ValueError("degree must be at least 1")

    def init(key):
        del key
        return {
            "w": jnp.zeros((n_in * degree, n_out), jnp.float32),
            "b": jnp.zeros((n_out,), jnp.float32),
        }

    def apply(params, stats, x):
        return poly_features(standardize(stats, x), degree) @ params["w"] + params["b"]

    return Model("poly", init, apply, n_in, n_out)


def mlp(
    n_in: int, n_out: int = 1, hidden: tuple[int, ...] = (64, 64), activation: str = "tanh"
) -> Model:
    """Fully connected network; Glorot-normal weights, zero biases, linear output layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    sizes = (n_in, *hidden, n_out)

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for k, (a, b) in zip(keys, zip(sizes[:-1], sizes[1:])):
            std = np.sqrt(2.0 / (a + b))
            layers.append(
                {
                    "w": std * jax.random.normal(k, (a, b), jnp.float32),
                    "b": jnp.zeros((b,), jnp.float32),
                }
            )
        return {"layers": layers}

    def apply(params, stats, x):
        h = standardize(stats, x)
        *body, last = params["layers"]
        for layer in body:
            h = act(h @ layer["w"] + layer["b"])
        return h @ last["w"] + last["b"]

    return Model("mlp", init, apply, n_in, n_out)


def make_model(spec: dict, n_in: int, n_out: int) -> Model:
    """Build a model from a config dict such as ``{"kind": "mlp", "hidden": [64], "activation": "tanh"}``."""
    kind = spec.get("kind", "linear")
    if spec.get("groups"):  # per-group deviations (core/groups.py); the group is x's last column
        from alloop.core import groups  # local: groups builds on this module

        values = spec["groups"]["values"]
        base = make_model({**spec, "groups": None}, n_in - 1, n_out)
        return groups.grouped(base, len(values), values)
    if kind == "linear":
        return linear(n_in, n_out)
    if kind == "poly":
        return poly(n_in, n_out, int(spec.get("degree", 3)))
    if kind == "mlp":
        return mlp(
            n_in,
            n_out,
            tuple(int(h) for h in spec.get("hidden", (64, 64))),
            spec.get("activation", "tanh"),
        )
    raise ValueError(f"unknown model kind {kind!r}")


def weight_mask(params: Params) -> Params:
    """1.0 on every leaf stored under key ``w``, 0.0 elsewhere: regularize weights, not biases."""

    def leaf_mask(path, leaf):
        last = path[-1]
        key = getattr(last, "key", None)
        return np.full(
            jnp.shape(leaf), 1.0 if key == "w" else 0.0, jnp.result_type(leaf)
        )  # numpy: no op to compile

    return jax.tree_util.tree_map_with_path(leaf_mask, params)
