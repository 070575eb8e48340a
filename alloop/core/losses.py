"""Losses with the label distributions they imply.

Each loss knows three things about a model output ``F`` (shape (n, k)):

- ``per_example(F, y)``: the loss L(z, θ) of each row (shape (n,));
- ``expected_sld(F, u, noise)``: the unlabeled squared loss derivative, E_y[(∂L/∂F · u)²] with y
  drawn from the model's own label distribution and ``u = J_F θ̇`` (method.md, eq. 67);
- ``sample(key, F, noise)``: a draw of labels from that distribution (used to check the line above).

``noise`` is the per-output label variance σ² for the squared loss and is ignored by the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Loss(NamedTuple):
    name: str
    per_example: Callable[[jax.Array, jax.Array], jax.Array]
    expected_sld: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    sample: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _squared_per_example(out, y):
    return jnp.sum((out - y) ** 2, axis=-1)


def _squared_expected_sld(out, u, noise):
    # dL/ds = 2 (F - y)·u with y ~ N(F, diag σ²): E[(2 (F - y)·u)²] = 4 Σ_k σ_k² u_k²   (57–58)
    del out
    return 4.0 * jnp.sum(noise * u**2, axis=-1)


def _squared_sample(key, out, noise):
    return out + jnp.sqrt(noise) * jax.random.normal(key, out.shape, out.dtype)


squared = Loss("squared", _squared_per_example, _squared_expected_sld, _squared_sample)


def _softmax_per_example(logits, y):
    # y holds class indices, shape (n,) or (n, 1)
    y = jnp.reshape(y, (logits.shape[0],)).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def _softmax_expected_sld(logits, u, noise):
    # dL/ds = (p - e_y)·u; over y ~ p this is the variance of u under p, summed as Σ p (u - mean)²:
    # E[u²] - mean² cancels catastrophically in float32 when u is large and nearly equal across
    # classes (it came out negative on real data, which broke the weighted batch draw)
    del noise
    p = jax.nn.softmax(logits, axis=-1)
    mean = jnp.sum(p * u, axis=-1, keepdims=True)
    return jnp.sum(p * (u - mean) ** 2, axis=-1)


def _softmax_sample(key, logits, noise):
    del noise
    return jax.random.categorical(key, logits, axis=-1)


softmax_cross_entropy = Loss(
    "softmax", _softmax_per_example, _softmax_expected_sld, _softmax_sample
)


def _logistic_per_example(logit, y):
    logit = logit[:, 0]
    y = jnp.reshape(y, logit.shape).astype(logit.dtype)
    return jax.nn.softplus(logit) - y * logit


def _logistic_expected_sld(logit, u, noise):
    del noise
    p = jax.nn.sigmoid(logit[:, 0])
    return p * (1.0 - p) * u[:, 0] ** 2


def _logistic_sample(key, logit, noise):
    del noise
    return jax.random.bernoulli(key, jax.nn.sigmoid(logit[:, 0])).astype(jnp.int32)


binary_logistic = Loss("logistic", _logistic_per_example, _logistic_expected_sld, _logistic_sample)

LOSSES = {loss.name: loss for loss in (squared, softmax_cross_entropy, binary_logistic)}
