"""``alloop verify`` checks a checkpoint against a layout computed without JAX: it must be the layout JAX builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from alloop.config import ModelSpec, PoolSpec, RunConfig
from alloop.io.checkpoint import encode_tree, flatten_tree
from alloop.training import fit as fitting
from alloop.training import layout

MODELS = [
    ModelSpec("linear"),
    ModelSpec("poly", degree=2),
    ModelSpec("mlp", hidden=(8, 4)),
    ModelSpec("mlp", hidden=(5,), activation="relu"),
]
TRAINS = [
    {"optimizer": "adam"},
    {"optimizer": "sgd", "momentum": 0.0},
    {"optimizer": "sgd", "momentum": 0.9},
    {"optimizer": "adam", "schedule": "constant"},
]


def _config(model: ModelSpec, train: dict, task: str = "regression") -> RunConfig:
    pool = PoolSpec("pool.parquet", "pool.parquet", "id", ("a", "b", "c"), "", 50)
    classes = ("x", "y", "z") if task == "classification" else None
    targets = ("label",) if task == "classification" else ("t1", "t2")
    base = {
        "epochs": 1,
        "batch_size": 8,
        "lr": 0.01,
        "final_lr": 0.01,
        "min_steps": 10,
        "schedule": "cosine",
        "seed": 0,
    }
    return RunConfig(
        pool,
        {"mean": [0.0] * 3, "std": [1.0] * 3},
        model,
        task,
        targets,
        s=1.0,
        train={**base, **train},
        classes=classes,
    )


def _spec(tree) -> dict:
    return {k: (a.shape, a.dtype) for k, a in flatten_tree(tree)}


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("train", TRAINS)
@pytest.mark.parametrize("model", MODELS)
def test_the_layout_without_jax_is_the_layout_jax_builds(model, train, task):
    config = _config(model, train, task)
    assert _spec(layout.checkpoint_like(config)) == _spec(fitting.checkpoint_like(config))


def test_a_checkpoint_of_another_model_is_refused_by_the_jax_free_layout(tmp_path):
    """The layout is strict: one hidden unit more, or one array missing, is a mismatch naming the array."""
    from alloop.errors import UserError
    from alloop.io.checkpoint import decode_tree

    config = _config(ModelSpec("mlp", hidden=(8, 4)), {"optimizer": "adam"})
    good = encode_tree(fitting.checkpoint_like(config), {})
    decode_tree(good, layout.checkpoint_like(config), tmp_path / "c.npz")  # loads
    wider = encode_tree(
        fitting.checkpoint_like(dataclasses.replace(config, model=ModelSpec("mlp", hidden=(9, 4)))),
        {},
    )
    with pytest.raises(UserError, match="layers/0"):
        decode_tree(wider, layout.checkpoint_like(config), tmp_path / "c.npz")
    tree = fitting.checkpoint_like(config)
    tree["opt_tangent"] = tree["opt_tangent"][:-1]
    with pytest.raises(UserError, match="opt_tangent/11"):
        decode_tree(encode_tree(tree, {}), layout.checkpoint_like(config), tmp_path / "c.npz")
    assert np.all(layout.checkpoint_like(config)["params"]["layers"][0]["w"] == 0)
