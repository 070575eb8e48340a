"""The layout of a run's checkpoint, from its config alone (numpy only: ``alloop verify`` never
imports JAX).

A checkpoint (``fit.checkpoint_tree``) stores θ, θ̇, the optax optimizer state and that state's
tangent. Their structure follows from the model spec and the optimizer: the core's
``linear``/``poly`` models are ``{"w": (p, outputs), "b": (outputs,)}`` and its ``mlp`` a list of
such layers; ``optax.sgd`` keeps a momentum trace (when momentum > 0) and a step count,
``optax.adam`` a count and the moments μ and ν, and the learning-rate schedule a count; the state's
tangent has one array per floating leaf of the state. ``tests/test_verify_layout.py`` checks this
equals ``fit.checkpoint_like`` (built by JAX) for every model kind and optimizer, so the two cannot
drift apart unnoticed.
"""

from __future__ import annotations

import numpy as np

from alloop.config import RunConfig, as_config

F32, I32 = np.dtype(np.float32), np.dtype(np.int32)


def param_shapes(config: RunConfig) -> dict:
    """θ's tree with ``(shape, dtype)`` leaves."""
    config = as_config(config)
    spec, n_in, n_out = config.model, len(config.pool.features), config.n_outputs
    if spec.kind == "linear":
        return {"w": ((n_in, n_out), F32), "b": ((n_out,), F32)}
    if spec.kind == "poly":
        return {"w": ((n_in * int(spec.degree), n_out), F32), "b": ((n_out,), F32)}
    if spec.kind == "mlp":
        sizes = [n_in, *(int(h) for h in spec.hidden), n_out]
        return {
            "layers": [{"w": ((a, b), F32), "b": ((b,), F32)} for a, b in zip(sizes, sizes[1:])]
        }
    raise ValueError(f"unknown model kind {spec.kind!r}")


def _leaves(tree) -> list:
    """Leaves in JAX's flattening order (dict keys sorted, lists in order)."""
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
    if isinstance(tree, list):
        return [leaf for t in tree for leaf in _leaves(t)]
    return [tree]


def layout_tree(config: RunConfig) -> dict:
    """The checkpoint's tree with ``(shape, dtype)`` leaves (nodes are dicts and lists; optax's
    tuples become dicts keyed "0", "1")."""
    config = as_config(config)
    params = param_shapes(config)
    train = config.train
    count = ((), I32)
    if train.get("optimizer", "adam") == "adam":
        opt_state = {"0": {"count": count, "mu": params, "nu": params}, "1": {"count": count}}
        floats = _leaves(params) * 2
    elif float(train.get("momentum") or 0.0):
        opt_state = {"0": {"trace": params}, "1": {"count": count}}
        floats = _leaves(params)
    else:
        opt_state = {"1": {"count": count}}
        floats = []
    return {
        "params": params,
        "tangent": params,
        "opt_state": opt_state,
        "opt_tangent": floats,
        "step": count,
    }


def checkpoint_like(config: RunConfig) -> dict:
    """Zeros laid out as the run's checkpoint: what ``checkpoint.load_tree`` checks a file against,
    without JAX."""

    def zeros(tree):
        if isinstance(tree, dict):
            return {k: zeros(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [zeros(v) for v in tree]
        shape, dtype = tree
        return np.zeros(shape, dtype)

    return zeros(layout_tree(config))
