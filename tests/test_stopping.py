"""Stopping rules: their defining properties on constructed rounds, and the stop signal that
training records and `alloop status` reports (from files alone)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_user_error, fill, invoke

from alloop.training import stopping
from alloop.training.stopping import StopRules, cohen_kappa, decide, prediction_change, stop_rounds


def rounds(preds, cv=None, sld=None, start=10, step=10):
    return [
        {
            "labels": start + step * i,
            "predictions": p,
            "cv_loss": None if cv is None else cv[i],
            "mean_sld": None if sld is None else sld[i],
        }
        for i, p in enumerate(preds)
    ]


def test_identical_models_agree_completely(rng):
    p = rng.normal(size=200)
    assert prediction_change(p, p.copy()) == 0.0
    c = rng.integers(0, 3, size=200)
    assert cohen_kappa(c, c.copy()) == 1.0
    assert (
        cohen_kappa(np.zeros(5), np.zeros(5)) == 1.0
    )  # one class everywhere: identical, not undefined


def test_kappa_is_zero_for_chance_agreement_and_negative_below():
    a = np.array([0, 0, 1, 1] * 50)
    b = np.array([0, 1, 0, 1] * 50)  # independent of a: agreement 1/2 = chance
    assert cohen_kappa(a, b) == pytest.approx(0.0, abs=1e-12)
    assert cohen_kappa(a, 1 - a) == pytest.approx(-1.0)


def test_prediction_change_is_relative_to_the_spread():
    p = np.linspace(-1, 1, 101)
    assert prediction_change(p, p + 0.01 * p.std()) == pytest.approx(0.01)
    assert prediction_change(1000 + p, 1000 + p + 0.01 * p.std()) == pytest.approx(
        0.01
    )  # an offset does not hide a change
    assert prediction_change(np.c_[p, p], np.c_[p, p + 0.1 * p.std()]) == pytest.approx(
        0.1
    )  # the largest over targets


def test_identical_successive_models_say_stop(rng):
    p = rng.normal(size=100)
    hist = rounds([p] * 6)
    at = stop_rounds(hist, "regression")
    rules = StopRules()
    assert (
        at["stable_predictions"] == rules.change_rounds
    )  # changes start at round 1; two zero changes in a row
    assert decide(hist, "regression")["stop"] is True
    c = rng.integers(0, 3, size=100)
    hist = rounds([c] * 6)
    assert stop_rounds(hist, "classification")["kappa"] == rules.kappa_window
    assert decide(hist, "classification")["stop"] is True


def test_a_model_still_moving_does_not_stop(rng):
    base = rng.normal(size=100)
    hist = rounds([base + 0.3 * i * rng.normal(size=100) for i in range(8)])
    assert stop_rounds(hist, "regression")["stable_predictions"] is None
    assert decide(hist, "regression")["stop"] is False
    hist = rounds([rng.integers(0, 3, size=100) for _ in range(8)])
    assert stop_rounds(hist, "classification")["kappa"] is None
    assert decide(hist, "classification")["stop"] is False


def test_a_model_that_settles_stops_once_it_has_settled(rng):
    base = rng.normal(size=300)
    preds = [base + (0.5**i) * rng.normal(size=300) for i in range(12)]
    changes = [None] + [prediction_change(a, b) for a, b in zip(preds, preds[1:])]
    at = stop_rounds(rounds(preds), "regression", StopRules(change_threshold=0.05, change_rounds=2))
    assert at["stable_predictions"] is not None
    assert changes[at["stable_predictions"]] < 0.05 and changes[at["stable_predictions"] - 1] < 0.05
    assert all(
        not (changes[i] < 0.05 and changes[i - 1] < 0.05)
        for i in range(2, at["stable_predictions"])
    )  # the first such round


def test_one_quiet_round_is_not_enough(rng):
    p = rng.normal(size=100)
    moving = [p, p + rng.normal(size=100), p + rng.normal(size=100)]
    hist = rounds(
        [*moving, moving[-1], moving[-1] + rng.normal(size=100)]
    )  # one zero change, then a jump
    assert stop_rounds(hist, "regression")["stable_predictions"] is None


def test_cv_plateau_and_sld_fall():
    p = np.arange(10.0)
    falling = rounds(
        [p] * 6, cv=[1.0, 0.8, 0.6, 0.4, 0.2, 0.1], sld=[1.0, 0.5, 0.2, 0.1, 0.06, 0.04]
    )
    at = stop_rounds(falling, "regression")
    assert at["cv_plateau"] is None  # still improving by far more than 1% over 3 rounds
    assert at["sld_fall"] == 5  # 0.04 <= 0.05 x peak 1.0
    flat = rounds([p] * 6, cv=[1.0, 0.5, 0.45, 0.449, 0.4489, 0.4488], sld=[1.0] * 6)
    at = stop_rounds(flat, "regression")
    assert at["cv_plateau"] == 5  # 0.45 -> 0.4488 over rounds 2..5
    assert at["sld_fall"] is None


def test_precomputed_signals_are_used_as_given():
    hist = [
        {"labels": 10, "change": None},
        {"labels": 20, "change": 0.001},
        {"labels": 30, "change": 0.002},
    ]
    assert stop_rounds(hist, "regression", StopRules(change_rounds=2))["stable_predictions"] == 2
    assert stop_rounds(hist, "regression", StopRules(change_rounds=3))["stable_predictions"] is None


def test_thresholds_can_be_overridden_and_unknown_ones_are_refused():
    assert StopRules.from_dict({"change_threshold": 0.5}).change_threshold == 0.5
    with pytest.raises(ValueError, match="unknown stopping thresholds"):
        StopRules.from_dict({"chnage_threshold": 0.5})


def test_history_keeps_the_last_training_per_label_count():
    recs = [
        {"command": "train", "stop": {"labels": 10, "change": None}},
        {"command": "ingest"},
        {"command": "train", "stop": {"labels": 20, "change": 0.5}},
        {"command": "train", "stop": {"labels": 20, "change": 0.4}},
        {"command": "train", "labels": 30},
    ]
    assert stopping.rounds_from_history(recs) == [
        {"labels": 10, "change": None},
        {"labels": 20, "change": 0.4},
    ]


# --- what training records and status reports -----------------------------------------------------


def _history(run):
    return [
        json.loads(line)
        for line in (run / "history.jsonl").read_text().splitlines()
        if line.strip()
    ]


def test_training_records_the_stop_signals_and_status_reports_them(run, runs, alloop_data):
    trains = [r for r in _history(run) if r.get("command") == "train"]
    first, second = trains[0]["stop"], trains[-1]["stop"]
    assert (
        first["labels"] == 3 and first["change"] is None and first["stop_rows"] == 240
    )  # the pool is smaller than the stop set
    assert second["labels"] == 6 and second["compared_with"] == 3 and second["change"] > 0
    assert second["mean_sld"] > 0 and second["cv_loss"] > 0  # the run chooses s by CV (--s auto)
    assert (run / "stopset.parquet").exists()
    # retraining on the same labels compares with the model on fewer labels, not with itself
    assert invoke(["train", "r"], runs).code == 0
    again = [r for r in _history(run) if r.get("command") == "train"][-1]["stop"]
    assert again["labels"] == 6 and again["compared_with"] == 3 and again["change"] > 0
    st = invoke(["status", "r", "--json"], runs)
    assert st.code == 0, st.stderr
    sp = st.json()["stopping"]
    assert sp["rule"] == "stable_predictions" and sp["stop"] is False and sp["rounds"] == 2
    assert set(sp["rules"]) == {"stable_predictions", "cv_plateau", "sld_fall"}
    assert sp["thresholds"]["change_threshold"] == StopRules().change_threshold
    text = invoke(["status", "r"], runs)
    assert text.code == 0 and "stop" in text.stdout and "stable_predictions" in text.stdout


def test_status_stop_overrides(run, runs):
    st = invoke(
        ["status", "r", "--json", "--stop", "change_threshold=1e9", "--stop", "change_rounds=1"],
        runs,
    ).json()["stopping"]
    assert (
        st["stop"] is True and st["thresholds"]["change_threshold"] == 1e9
    )  # any change counts as stable now
    assert_user_error(
        invoke(["status", "r", "--stop", "nonsense=1"], runs), "unknown stopping thresholds"
    )
    assert_user_error(invoke(["status", "r", "--stop", "change_threshold"], runs), "NAME=NUMBER")


def test_successive_rounds_on_the_same_model_feed_the_rule(run, runs, alloop_data):
    """Two more rounds through the CLI: each training adds one comparison with the round before."""
    for _ in range(2):
        q = invoke(["query", "r", "-k", "3", "--json"], runs)
        assert q.code == 0, q.stderr
        assert (
            invoke(
                ["ingest", "r", fill(q.json()["path"], alloop_data.truth, out=runs / "filled.csv")],
                runs,
            ).code
            == 0
        )
    sp = invoke(["status", "r", "--json"], runs).json()["stopping"]
    assert sp["rounds"] >= 4
    changes = [r["stop"]["change"] for r in _history(run) if r.get("command") == "train"]
    assert all(c is None or c >= 0 for c in changes) and sum(c is not None for c in changes) >= 3
