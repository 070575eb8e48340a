"""The typed run config: it reads every config.json alloop has written, writes the same JSON back, and
is the one place options are checked. A run directory written by alloop 0.1.0 keeps working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alloop.commands.ingest import ingest
from alloop.commands.query import query
from alloop.commands.status import status
from alloop.commands.train import train
from alloop.commands.verify import verify_run
from alloop.config import ACTIVATIONS, RunConfig, parse_s
from alloop.core import models
from alloop.errors import UserError

OLD = Path(__file__).parent / "data" / "run-v0.1.0"


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """A copy of the 0.1.0 run directory with its pool beside it (found through config.pool.from_run)."""
    shutil.copytree(OLD, tmp_path / "old")
    monkeypatch.setenv("ALLOOP_RUNS", str(tmp_path / "old" / "runs"))
    return tmp_path / "old" / "runs" / "old"


def test_a_config_written_by_0_1_0_round_trips(old_run):
    stored = json.loads((old_run / "config.json").read_text())
    config = RunConfig.from_json(stored)
    assert (
        config.model.kind == "linear"
        and config.s == 0.5
        and config.pool.features == ("a", "b", "c")
    )
    assert config.to_json() == stored  # nothing lost, nothing added
    assert RunConfig.from_json(config.to_json()) == config


def test_a_run_written_by_0_1_0_keeps_working(old_run):
    assert verify_run("old")["ok"]
    st = status("old")
    assert (st["labels"], st["outstanding"], st["round"], st["s"]) == (8, 3, 1, 0.5)
    truth = pd.read_csv(old_run.parents[1] / "truth.csv").set_index("id")["target"]
    asked = pd.read_csv(old_run / "queries" / "round-0001.csv")
    asked["target"] = truth.loc[asked["id"]].to_numpy()
    filled = old_run.parents[1] / "filled.csv"
    asked.to_csv(filled, index=False)
    rec = ingest("old", str(filled), no_train=True)
    assert (rec["added"], rec["labels"], rec["outstanding"]) == (3, 11, 0)
    trained = train("old", epochs=1)
    assert trained["labels"] == 11 and np.isfinite(trained["test_rmse"])
    q = query("old", k=4)
    assert q["round"] == 2 and q["rows"] == 4 and q["strategy"] == "herding"
    assert verify_run("old")["ok"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": "ranking"}, "unknown --task 'ranking'"),
        ({"s": -1.0}, "--s must be a positive number"),
        (
            {"s": "loocv", "task": "classification"},
            "--s loocv needs a linear or poly regression model",
        ),
        ({"tangent": "lissa"}, "unknown --tangent 'lissa'"),
        ({"trainer": "adam"}, "unknown --trainer 'adam'"),
        ({"train": {"epochs": 0}}, "--epochs must be at least 1"),
        ({"train": {"lr": float("nan")}}, "--lr must be a positive number"),
        ({"train": {"optimizer": "rmsprop"}}, "unknown --optimizer 'rmsprop'"),
        ({"targets": ("score",)}, "target column 'score' clashes"),
        ({"targets": ("y", "y")}, "--target names a column twice"),
        ({"tune": {"folds": 1}}, "--folds must be at least 2"),
    ],
)
def test_validate_names_the_option_and_the_fix(old_run, change, message):
    config = RunConfig.from_json(json.loads((old_run / "config.json").read_text()))
    config.validate()
    with pytest.raises(UserError, match=message):
        config.replace(**change).validate()


@pytest.mark.parametrize(
    "model, message",
    [
        ({"kind": "forest"}, "unknown --model 'forest'"),
        ({"kind": "poly", "degree": 0}, "--degree must be at least 1"),
        ({"kind": "mlp", "hidden": [0]}, "--hidden sizes must be at least 1"),
        ({"kind": "mlp", "activation": "swish"}, "unknown --activation"),
        ({"curvature": "fisher"}, "unknown --curvature"),
    ],
)
def test_model_options_are_checked_before_training(old_run, model, message):
    stored = json.loads((old_run / "config.json").read_text())
    with pytest.raises(UserError, match=message):
        RunConfig.from_json({**stored, "model": model}).validate()


def test_activation_names_are_the_core_models(old_run):
    assert set(ACTIVATIONS) == set(models.ACTIVATIONS)


@pytest.mark.parametrize(
    "text, value", [("auto", "auto"), (" LOOCV ", "loocv"), ("2.5", 2.5), (3, 3.0)]
)
def test_parse_s(text, value):
    assert parse_s(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "big", None])
def test_parse_s_refuses(text):
    with pytest.raises(UserError, match="--s must be a positive number, auto or loocv"):
        parse_s(text)
