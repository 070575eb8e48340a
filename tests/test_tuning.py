"""tuning: choosing s (``--s auto``, ``--s loocv``), the validation curve and its wiring into the
app and CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alloop.core import hyper
from alloop.training import choose_s as tuning
from alloop.training import validation_curve as curves


def _config(x, model=None, s="auto", **tune):
    """A run's config as tuning reads it, for arrays built in the test."""
    return {
        "task": "regression",
        "targets": ["t"],
        "pool": {"features": [f"f{j}" for j in range(x.shape[1])]},
        "standardizer": {
            "mean": [float(v) for v in x.mean(0)],
            "std": [float(v) for v in x.std(0)],
        },
        "model": model or {"kind": "linear"},
        "regularizer": "l2",
        "s": s,
        "train": {"seed": 0, "lr": 0.01, "epochs": 100, "batch_size": 64},
        "tune": tune,
    }


@pytest.fixture(scope="module")
def interior():
    """40 rows, 12 features of which 4 matter, noisy labels: the 5-fold CV optimum is inside (near
    s = 10; a draw where it is inside under either fold assignment alloop has used, not only one)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    beta = rng.normal(size=12) * np.r_[np.ones(4), 0.1 * np.ones(8)]
    y = (x @ beta + rng.normal(size=40))[:, None]
    config = _config(x)
    route, ev, k = tuning.evaluator(config, x, y, tuning.tune_config(config))
    grid = tuning.log_grid(1e-4, 1e5, 8)
    cv = np.array([ev(float(s))[0] for s in grid])
    return x, y, config, ev, grid, cv


@pytest.fixture(scope="module")
def figure2():
    """Six points and a degree-5 polynomial, as in the paper's §3.3: LOOCV has two local minima."""
    rng = np.random.default_rng(2)
    x = np.sort(rng.uniform(-1, 1, size=(6, 1)), 0).astype(np.float32)
    y = np.sin(3 * x) + 0.5 * np.cos(2 * x) + 0.2 * rng.normal(size=x.shape)
    return x, y, _config(x, {"kind": "poly", "degree": 5})


def test_interior_problem_has_an_interior_optimum(interior):
    *_, grid, cv = interior
    i = int(np.argmin(cv))
    assert 0 < i < len(grid) - 1 and cv[0] > 1.1 * cv[i] and cv[-1] > 1.1 * cv[i]
    assert (
        0.95 < cv[-1] < 1.15
    )  # targets standardized as training sees them: s → ∞ predicts the mean, loss ≈ 1


@pytest.mark.parametrize("s_prev", [None, 1e3, 1e-3])
def test_auto_lands_within_one_percent_of_the_grid_optimum(interior, s_prev):
    x, y, config, ev, grid, cv = interior
    choice = tuning.choose_s(config, x, y, s_prev=s_prev)
    assert choice.route == "exact" and choice.folds == 5 and choice.stop == "converged"
    assert choice.cv_loss <= 1.01 * cv.min()
    assert ev(choice.s)[0] == pytest.approx(choice.cv_loss, rel=1e-9)
    assert len(choice.evaluations) <= 16  # gradient steps, not a grid


def test_sgdf_route_hypergradient_and_choice(interior):
    """Folds trained by SGDF (vmapped, warm-started along s): the hypergradient and the choice agree
    with the exact route."""
    x, y, config, ev, grid, cv = interior
    tc = tuning.TuneConfig(route="sgdf", steps=300)
    route, sg, k = tuning.evaluator(config, x, y, tc)
    assert route == "sgdf" and k == 5
    for s in (1.0, 30.0):
        exact_loss, exact_grad = ev(s)
        loss, grad = sg(s)
        assert loss == pytest.approx(exact_loss, rel=0.02)
        assert grad == pytest.approx(exact_grad, rel=0.1)
    choice = tuning.choose_s(config, x, y, tc=tc, ev=(route, sg, k))
    assert ev(choice.s)[0] <= 1.01 * cv.min()


def test_mlp_route_runs_and_never_ends_worse_than_it_started(figure2):
    x, y, _ = figure2
    config = _config(
        x,
        {
            "kind": "mlp",
            "hidden": [8],
            "activation": "tanh",
            "curvature": "gauss-newton",
            "damping": 1e-3,
        },
    )
    choice = tuning.choose_s(
        config, x, y, tc=tuning.TuneConfig(route="sgdf", steps=100, max_evals=5)
    )
    assert choice.route == "sgdf" and choice.folds == len(x)
    assert math.isfinite(choice.s) and choice.cv_loss <= choice.evaluations[0].loss


def test_an_mlp_regression_chooses_s_on_the_grid_by_default(figure2):
    x, y, _ = figure2
    config = _config(
        x,
        {
            "kind": "mlp",
            "hidden": [8],
            "activation": "tanh",
            "curvature": "gauss-newton",
            "damping": 1e-3,
        },
    )
    choice = tuning.choose_s(config, x, y)
    assert choice.route == "grid" and choice.s in tuning.GRID_S
    assert choice.cv_loss == min(e.loss for e in choice.evaluations) and len(
        choice.evaluations
    ) == len(tuning.GRID_S)
    curve = curves.validation_curve(config, x, y, tuning.log_grid(0.1, 10.0, 1), s_prev=1.0)
    assert (
        curve.choice.route == "grid" and curve.choice.s == choice.s
    )  # tune-s shows the s that train would use


def test_loocv_finds_the_global_minimum_auto_a_local_one(figure2):
    """Like the paper's Figure 2: LOOCV has local minima; loocv takes the global one, auto the one
    downhill of its start."""
    x, y, config = figure2
    dense = tuning.log_grid(1e-4, 1e5, 40)
    route, ev, k = tuning.evaluator(config, x, y, tuning.tune_config(config))
    loo = np.array([ev.loocv(float(s))[0] for s in dense])
    assert k == len(x) and route == "exact"
    best = tuning.choose_s(config, x, y, mode="loocv")
    assert best.cv_loss <= loo.min() * (1 + 1e-9)
    assert best.s == pytest.approx(dense[int(np.argmin(loo))], rel=0.1)
    local = tuning.choose_s(config, x, y, s_prev=30.0)
    assert local.s > 10 * best.s and local.cv_loss > 1.5 * best.cv_loss
    assert abs(ev(local.s)[1] * local.s) < 1e-3  # a stationary point of the same LOOCV curve


def test_validation_curve_and_its_png(figure2):
    x, y, config = figure2
    curve = curves.validation_curve(config, x, y, tuning.log_grid(1e-3, 1e4, 4), s_prev=1.0)
    assert curve.cv_label.startswith("LOOCV")
    np.testing.assert_allclose(
        curve.cv, curve.loocv, rtol=1e-8
    )  # LOO folds solved exactly = the closed form
    assert len(curve.local_minima()) >= 2
    assert curve.g_pert is not None and np.all(np.isfinite(curve.g_pert))
    assert curve.choice.cv_loss <= min(
        curve.cv[np.argmin(np.abs(np.log(curve.s)))], curve.choice.evaluations[0].loss
    )
    png = curves.plot_png(curve, "figure 2")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    json.dumps(curve.to_dict())


@pytest.mark.parametrize(
    "text, value", [("auto", "auto"), (" LOOCV ", "loocv"), ("2.5", 2.5), ("1e-3", 1e-3)]
)
def test_parse_s(text, value):
    assert tuning.parse_s(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "often", ""])
def test_parse_s_refuses(text):
    from alloop.errors import UserError

    with pytest.raises(UserError, match="--s must be"):
        tuning.parse_s(text)


def test_fold_count_switches_to_loocv_for_few_labels():
    tc = tuning.TuneConfig(folds=5, loo_below=30)
    assert (
        tuning.n_folds(30, tc) == 30 and tuning.n_folds(31, tc) == 5 and tuning.n_folds(3, tc) == 3
    )
    assert hyper.fold_masks(30, 30).shape == (30, 30)


# --- the app and the CLI --------------------------------------------------------------------------


def test_train_auto_records_s_per_round_and_tune_s_plots(alloop_data, runs):
    from cli_helpers import FAST, invoke

    d = alloop_data
    assert (
        invoke(
            [
                "init",
                "t",
                "--pool",
                d.pool,
                "--test",
                d.test,
                "--labels",
                d.seed,
                "--s",
                "auto",
                "--folds",
                "4",
                *FAST,
            ],
            runs,
        ).code
        == 0
    )
    config = json.loads((runs / "t" / "config.json").read_text())
    assert config["s"] == "auto" and config["tune"] == {"folds": 4}
    first = invoke(["train", "t", "--json"], runs)
    assert first.code == 0, first.stderr
    rec = first.json()
    assert (
        rec["s"] == rec["s_choice"]["s"]
        and rec["s_choice"]["s_start"] == 1.0
        and rec["s_choice"]["mode"] == "auto"
    )
    again = invoke(["train", "t", "--json"], runs).json()
    assert again["s_choice"]["s_start"] == pytest.approx(
        rec["s"]
    )  # warm start from the last round's s
    fixed = invoke(["train", "t", "--s", "0.5", "--json"], runs).json()
    assert fixed["s"] == 0.5 and "s_choice" not in fixed
    st = invoke(["status", "t", "--json"], runs).json()
    assert (
        st["s"] == "auto"
        and st["s_model"] == 0.5
        and [r["s"] for r in st["s_by_round"]] == [rec["s"], again["s"], 0.5]
    )
    png = runs / "curve.png"
    tuned = invoke(
        ["tune-s", "t", "--plot", "--out", str(png), "--per-decade", "2", "--json"], runs
    )
    assert tuned.code == 0, tuned.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    history = [json.loads(line) for line in (runs / "t" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["command"] == "tune-s" and history[-1]["s"] == tuned.json()["s"]


def test_auto_is_the_default_for_regression(alloop_data, runs):
    from cli_helpers import FAST, invoke

    from alloop.commands.init import init_run

    assert invoke(["init", "d", "--pool", alloop_data.pool, *FAST], runs).code == 0
    assert json.loads((runs / "d" / "config.json").read_text())["s"] == "auto"
    init_run(
        "c",
        str(alloop_data.pool),
        features=["x0", "x1", "x2"],
        task="classification",
        classes=["a", "b"],
    )
    assert (
        json.loads((runs / "c" / "config.json").read_text())["s"] == 1.0
    )  # not measured on classification: s = 1
    assert (
        invoke(["init", "m", "--pool", alloop_data.pool, "--model", "mlp", *FAST], runs).code == 0
    )
    assert (
        json.loads((runs / "m" / "config.json").read_text())["s"] == 1.0
    )  # auto raised the MLPs' test RMSE: s = 1


def test_bad_s_values_are_user_errors(alloop_data, runs):
    from cli_helpers import FAST, invoke

    d = alloop_data
    bad = invoke(["init", "b", "--pool", d.pool, "--s", "sometimes", *FAST], runs)
    assert bad.code == 2 and "--s must be" in bad.stderr
    mlp = invoke(["init", "b", "--pool", d.pool, "--model", "mlp", "--s", "loocv", *FAST], runs)
    assert mlp.code == 2 and "loocv needs" in mlp.stderr
    assert not (runs / "b").exists()
