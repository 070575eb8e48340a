"""A run's groups (``init --group-col``): where the config keeps them and what training adds.

The group column is the last of the run's features and its sorted values are stored in the model
spec (``{"groups": {"column": ..., "values": [...]}}``), so every feature matrix the run reads
carries the group and ``core.groups`` looks the code up. Training sets the residual precision α from
the labels and puts every group without labels at the prior; the checkpoint's metadata gets each
group's labels, c_i and dc_i/ds, which ``status`` shows without starting JAX.
"""

from __future__ import annotations

import numpy as np

from alloop.config import RunConfig, as_config
from alloop.core import groups

MAX_GROUPS = 100_000
GROUP_SCALE = 1e12  # the group column's "standard deviation": feature-space strategies see zeros


def spec_of(config: RunConfig) -> dict | None:
    """``{"column": ..., "values": [...]}`` of a grouped run, else None."""
    return as_config(config).model.extra.get("groups") or None


def start(config: RunConfig, params, tangent, s: float, x: np.ndarray, y_std: np.ndarray):
    """(params, tangent) to train from: α from the labels' pooled residual, unlabeled groups at
    the prior for ``s`` (their exact optimum and tangent)."""
    params = groups.with_alpha(params, groups.residual_alpha(x[:, :-1], y_std))
    if tangent is None:
        tangent = _zeros_like(params)
    return groups.at_prior(params, float(s), label_codes(config, x), tangent)


def label_codes(config: RunConfig, x: np.ndarray) -> np.ndarray:
    """The group code of each row (-1 for a value the run did not see at init)."""
    values = np.asarray(spec_of(config)["values"], np.float64)
    raw = np.asarray(x[:, -1], np.float64)
    idx = np.clip(np.searchsorted(values, raw), 0, len(values) - 1)
    return np.where(values[idx] == raw, idx, -1)


def summary(config: RunConfig, params, tangent, x: np.ndarray) -> dict:
    """Per group: its value, labels, c_i and dc_i/ds (the checkpoint's metadata)."""
    spec = spec_of(config)
    c, dc = groups.pseudo_regularities(params, tangent)
    codes = label_codes(config, x)
    counts = np.bincount(codes[codes >= 0], minlength=len(c))
    return {
        "column": spec["column"],
        "values": list(spec["values"]),
        "labels": [int(v) for v in counts],
        "c": [float(v) for v in c],
        "dc_ds": [float(v) for v in dc],
        "alpha": float(np.asarray(params["alpha"])),
    }


def _zeros_like(tree):
    import jax

    return jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), np.float32), tree)
