"""``--model auto``: the run chooses linear, poly 2, poly 3 or an MLP by the cross-validated loss of
its own labels.

Checked against the generating function (a linear target picks linear; a cubic one picks poly 3; a
sine, which no polynomial of degree 3 follows, the MLP), the switching margin, the MLP's grid CV
against fold trainings written out one by one, the run's files (the checkpoint has the chosen
model's shapes, verify agrees), a switch when new labels show curvature, and the user's mistakes
(exit 2, one line, run unchanged).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from cli_helpers import invoke

from alloop import config as config_mod
from alloop.commands import common
from alloop.commands import train as train_cmd
from alloop.config import PoolSpec, RunConfig
from alloop.core import hyper
from alloop.io import rundir
from alloop.sim import auto as sim_auto
from alloop.sim import simulate as sim
from alloop.training import choose_model, stopping
from alloop.training import choose_s as choose_s_mod
from alloop.training import fit as fitting

FAST = ["--epochs", "1", "--min-steps", "300", "--lr", "0.05"]


def _config(n_features: int, mean=0.0, std=1.0) -> RunConfig:
    pool = PoolSpec(
        "p.parquet", "p.parquet", "id", tuple(f"x{j}" for j in range(n_features)), "", 100
    )
    return RunConfig(
        pool,
        {"mean": [mean] * n_features, "std": [std] * n_features},
        fitting.model_spec("auto"),
        "regression",
        ("target",),
        s="auto",
    )


def _xy(f, n=60, d=2, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (f(x) + noise * rng.normal(size=n))[:, None]


def test_a_linear_target_picks_linear_and_a_cubic_one_poly_3():
    x, y = _xy(lambda x: 2.0 * x[:, 0] - x[:, 1])
    assert choose_model.choose(_config(2), x, y).model.label() == "linear"
    x, y = _xy(lambda x: x[:, 0] ** 3 - 2.0 * x[:, 0] + x[:, 1])
    picked = choose_model.choose(_config(2), x, y)
    assert picked.model.label() == "poly 3"
    assert picked.cv_loss["poly 3"] < 0.2 * picked.cv_loss["linear"]
    assert not picked.switched and picked.previous is None


def test_the_model_in_use_is_kept_unless_beaten_by_the_margin():
    x, y = _xy(lambda x: x[:, 0] ** 3 - 2.0 * x[:, 0] + x[:, 1])
    linear = fitting.model_spec("linear")
    kept = choose_model.choose(_config(2), x, y, current=linear, margin=1e9)
    assert kept.model.label() == "linear" and not kept.switched and "kept linear" in kept.reason
    moved = choose_model.choose(_config(2), x, y, current=linear)
    assert (
        moved.model.label() == "poly 3"
        and moved.switched
        and moved.previous == "linear"
        and "switched from linear" in moved.reason
    )


def test_each_candidates_cv_loss_is_its_own_s_search():
    x, y = _xy(lambda x: x[:, 0] ** 2 + x[:, 1], seed=3)
    picked = choose_model.choose(_config(2), x, y)
    for spec in choose_model.candidates():
        _, alone = fitting_choose(spec, x, y)
        assert picked.cv_loss[spec.label()] == pytest.approx(alone.cv_loss, rel=1e-9)


def fitting_choose(spec, x, y):
    from alloop.training import choose_s

    if spec.kind == "mlp":
        choice = choose_s.choose_grid(_config(2).replace(model=spec), x, y)
        return choice.s, choice
    return choose_s.resolve_s(_config(2).replace(model=spec), x, y)


def test_the_mlp_competes_from_40_labels_with_s_auto_only():
    x, y = _xy(lambda x: np.sin(3.0 * x[:, 0]) + x[:, 1], n=39)
    assert (
        "mlp 64,64" not in choose_model.choose(_config(2), x, y).cv_loss
    )  # LOOCV here: not the MLP's folds
    x, y = _xy(lambda x: np.sin(3.0 * x[:, 0]) + x[:, 1], n=40)
    assert "mlp 64,64" in choose_model.choose(_config(2), x, y).cv_loss
    assert "mlp 64,64" not in choose_model.choose(_config(2).replace(s="loocv"), x, y).cv_loss


def test_a_sine_that_no_cubic_follows_picks_the_mlp():
    x, y = _xy(lambda x: np.sin(3.0 * x[:, 0]) + 0.5 * x[:, 1], n=120, seed=1, noise=0.05)
    picked = choose_model.choose(_config(2), x, y)
    assert picked.model.label() == "mlp 64,64" and picked.model.kind == "mlp"
    assert picked.cv_loss["mlp 64,64"] < 0.5 * min(
        v for k, v in picked.cv_loss.items() if k != "mlp 64,64"
    )
    assert picked.s_choice.route == "grid" and picked.s in choose_s_mod.GRID_S


def test_grid_cv_equals_each_fold_trained_alone_on_its_own_rows():
    """Every (fold, s) of the vmapped, padded grid training against an unpadded training on the
    fold's rows only: the held-out rows must not reach the fold's model, and the CV loss is their
    mean squared error."""
    from alloop.core import objective, sgdf

    x, y = _xy(lambda x: np.sin(2.0 * x[:, 0]) + x[:, 1], n=45, seed=2)
    spec = fitting.model_spec("mlp", hidden=(8,))
    config = _config(2).replace(model=spec)
    grid, steps = (0.5, 5.0), 150
    got = choose_s_mod.choose_grid(config, x, y, grid=grid, steps=steps)
    tc = choose_s_mod.tune_config(config)
    masks = hyper.fold_masks(len(x), choose_s_mod.n_folds(len(x), tc), tc.seed)
    stats = fitting.target_stats(config, y)
    yt = fitting.make_targets(config, y, stats)
    init = fitting.build_model(config).init(jax.random.PRNGKey(config.seed))
    problem = fitting.build_problem(config, init)
    rows_at_chosen = np.zeros(len(x))
    for s, value in zip(grid, [e.loss for e in got.evaluations]):
        total = 0.0
        for m in masks:
            tr, va = m > 0, m == 0
            cfg = sgdf.TrainConfig.from_dict(
                {
                    **fitting.train_config(config, int(tr.sum())).to_dict(),
                    "epochs": steps,
                    "batch_size": int(tr.sum()),
                    "tangent_every": 0,
                }
            )
            state, _ = sgdf.fit(problem, objective.make_data(x[tr], yt[tr]), s, cfg, params=init)
            held = np.asarray(
                objective.per_example_loss(
                    problem, state.params, jax.numpy.asarray(x[va]), jax.numpy.asarray(yt[va])
                )
            )
            total += float(np.sum(held))
            if s == got.s:
                rows_at_chosen[va] = held
        assert value == pytest.approx(total / len(x), rel=2e-3)
    assert (
        got.s == grid[int(np.argmin([e.loss for e in got.evaluations]))]
        and got.folds == len(masks) == 5
    )
    # each label's held-out loss at the chosen s (what the one-standard-error rule pairs across
    # candidates)
    np.testing.assert_allclose(got.row_loss, rows_at_chosen, rtol=5e-3, atol=1e-4)


# --- a run ---------------------------------------------------------------------------------------


def _cubic_pool(folder, n=400, seed=0):
    """One feature; the target is x³: near x = 0 it looks linear, further out it does not."""
    rng = np.random.default_rng(seed)
    x = np.r_[rng.uniform(-0.3, 0.3, n // 2), rng.uniform(-2.0, 2.0, n // 2)]
    y = x**3 + 0.5 * x + 0.01 * rng.normal(size=n)
    pool = pd.DataFrame({"id": np.arange(n), "x": x, "target": y})
    pool.drop(columns="target").to_parquet(folder / "pool.parquet", index=False)
    return pool


def _labels(pool, rows, path):
    pool.iloc[rows][["id", "target"]].to_csv(path, index=False)
    return str(path)


def test_an_auto_run_switches_when_new_labels_show_curvature_and_its_files_follow(runs, tmp_path):
    pool = _cubic_pool(tmp_path)
    seed = _labels(
        pool, list(range(0, 12)), tmp_path / "seed.csv"
    )  # all near 0: x³ is invisible under 0.5x
    ok = lambda r: (r.code == 0) or pytest.fail(r.stderr)  # noqa: E731
    ok(
        invoke(
            [
                "init",
                "a",
                "--pool",
                str(tmp_path / "pool.parquet"),
                "--labels",
                seed,
                "--model",
                "auto",
                *FAST,
            ],
            runs,
        )
    )
    ok(invoke(["train", "a"], runs))
    st = json.loads(invoke(["status", "a", "--json"], runs).stdout)
    assert (st["model"], st["model_now"]) == ("auto", "linear")
    assert st["model_choice"]["previous"] is None
    far = _labels(
        pool, list(range(200, 240)), tmp_path / "far.csv"
    )  # x across [-2, 2]: the cubic shows
    ok(invoke(["ingest", "a", far, "--allow-unqueried"], runs))
    st = json.loads(invoke(["status", "a", "--json"], runs).stdout)
    assert (
        st["model_now"] == "poly 3"
        and st["model_choice"]["switched"]
        and st["model_choice"]["previous"] == "linear"
    )
    assert st["figures"]["train_loss"] < 0.05
    run = rundir.open_run(str(runs / "a"))
    assert run.state["model"]["kind"] == "poly" and run.state["model"]["degree"] == 3
    assert (
        json.loads((runs / "a" / "config.json").read_text())["model"]["kind"] == "auto"
    )  # what the user chose stays
    tree, meta = common.load_checkpoint(run)
    assert np.asarray(tree["params"]["w"]).shape == (
        3,
        1,
    )  # x, x², x³ of the one feature: poly 3's parameters
    assert meta["model_choice"]["model"] == "poly 3"
    assert set(meta["model_choice"]["spread"]) == {
        "linear",
        "poly 2",
        "poly 3",
        "mlp 64,64",
    }  # checked on the run's stop set
    ok(invoke(["verify", "a"], runs))
    q = invoke(["query", "a", "-k", "5", "--json", "--strategy", "sld"], runs)
    ok(q)
    assert json.loads(q.stdout)["strategy"] == "sld"  # the chosen model's tangent scores the pool
    text = invoke(["status", "a"], runs).stdout
    assert "model now" in text and "poly 3" in text and "switched from linear" in text


def test_an_auto_run_moves_to_the_mlp_when_the_target_is_a_sine_and_queries_with_it(runs, tmp_path):
    rng = np.random.default_rng(4)
    n = 400
    x = rng.uniform(-3.0, 3.0, n)
    pool = pd.DataFrame(
        {"id": np.arange(n), "x": x, "target": np.sin(2.0 * x) + 0.02 * rng.normal(size=n)}
    )
    pool.drop(columns="target").to_parquet(tmp_path / "pool.parquet", index=False)
    ok = lambda r: (r.code == 0) or pytest.fail(r.stderr)  # noqa: E731
    ok(
        invoke(
            [
                "init",
                "m",
                "--pool",
                str(tmp_path / "pool.parquet"),
                "--labels",
                _labels(pool, list(range(12)), tmp_path / "a.csv"),
                "--model",
                "auto",
                *FAST,
            ],
            runs,
        )
    )
    ok(invoke(["train", "m"], runs))
    assert (
        json.loads(invoke(["status", "m", "--json"], runs).stdout)["model_now"] != "mlp 64,64"
    )  # 12 labels: not a candidate yet
    ok(
        invoke(
            [
                "ingest",
                "m",
                _labels(pool, list(range(12, 80)), tmp_path / "b.csv"),
                "--allow-unqueried",
            ],
            runs,
        )
    )
    st = json.loads(invoke(["status", "m", "--json"], runs).stdout)
    assert st["model_now"] == "mlp 64,64" and st["model_choice"]["switched"], st["model_choice"]
    run = rundir.open_run(str(runs / "m"))
    tree, meta = common.load_checkpoint(run)
    assert [np.asarray(layer["w"]).shape for layer in tree["params"]["layers"]] == [
        (1, 64),
        (64, 64),
        (64, 1),
    ]
    assert meta["s_choice"]["route"] == "grid" and meta["s"] in choose_s_mod.GRID_S
    # the grid's trainings are kept, and the next training's search starts from them
    kept = train_cmd.grid_warm(run, common.config_of(run))
    assert kept is not None and kept.n == 80 and meta["s_choice"]["stop"] == "grid"
    ok(
        invoke(
            [
                "ingest",
                "m",
                _labels(pool, list(range(80, 90)), tmp_path / "c.csv"),
                "--allow-unqueried",
            ],
            runs,
        )
    )
    _, meta = common.load_checkpoint(rundir.open_run(str(runs / "m")))
    assert meta["model_choice"]["model"] == "mlp 64,64"
    assert meta["s_choice"]["stop"] == "grid, warm start", meta["s_choice"]
    ok(invoke(["verify", "m"], runs))
    q = invoke(["query", "m", "-k", "5", "--json"], runs)
    ok(q)
    out = json.loads(q.stdout)
    assert (
        out["rows"] == 5 and out["strategy"] == "herding"
    )  # an auto run keeps its own default strategy, whatever the model now
    assert "mlp 64,64" in invoke(["status", "m"], runs).stdout


@pytest.mark.parametrize(
    "extra,why",
    [
        (["--task", "classification"], "--model auto"),
        (["--s", "1"], "--s auto"),
    ],
)
def test_auto_where_it_cannot_choose_is_one_line_and_exit_2(runs, tmp_path, extra, why):
    pool = _cubic_pool(tmp_path)
    seed = _labels(pool, [0, 1, 2], tmp_path / "seed.csv")
    res = invoke(
        [
            "init",
            "b",
            "--pool",
            str(tmp_path / "pool.parquet"),
            "--labels",
            seed,
            "--model",
            "auto",
            *extra,
        ],
        runs,
    )
    assert (
        res.code == 2
        and why in res.stderr
        and len(res.stderr.strip().splitlines()) == 1
        and "Traceback" not in res.stderr
    )
    assert not (runs / "b").exists()


@pytest.mark.parametrize(
    "extra,model,s",
    [
        ([], "auto", "auto"),  # a regression run chooses its model unless told
        (["--s", "loocv"], "auto", "loocv"),
        (["--s", "2"], "linear", 2.0),  # a given s leaves auto nothing to choose with
        (["--model", "mlp"], "mlp", 1.0),
        (["--model", "linear"], "linear", "auto"),
    ],
)
def test_init_defaults_to_auto_for_regression_whose_s_is_chosen(runs, tmp_path, extra, model, s):
    pool = _cubic_pool(tmp_path)
    seed = _labels(pool, [0, 1, 2], tmp_path / "seed.csv")
    res = invoke(
        ["init", "d", "--pool", str(tmp_path / "pool.parquet"), "--labels", seed, *extra], runs
    )
    assert res.code == 0, res.stderr
    config = json.loads((runs / "d" / "config.json").read_text())
    assert (config["model"]["kind"], config["s"]) == (model, s)


def test_the_default_model_is_linear_for_classification():
    assert (
        config_mod.default_model("classification") == "linear"
        and config_mod.default_model("classification", "auto") == "linear"
    )
    assert (
        config_mod.default_model("regression") == "auto"
        and config_mod.default_model("regression", 0.5) == "linear"
    )


def test_simulate_replays_inits_default_model(tmp_path):
    pool = _cubic_pool(tmp_path, n=200, seed=2)
    pool.to_parquet(tmp_path / "pool_t.parquet", index=False)
    pool.iloc[:50].drop(columns="id").to_parquet(tmp_path / "test_t.parquet", index=False)
    sim.run_simulation(
        pool=str(tmp_path / "pool_t.parquet"),
        test=str(tmp_path / "test_t.parquet"),
        strategy_list=["random"],
        reps=1,
        out=str(tmp_path / "o"),
        jobs=1,
        initial=10,
        budget=20,
        batch=10,
    )
    settings = json.loads((tmp_path / "o" / "config.json").read_text())["settings"]
    assert (settings["model"]["kind"], settings["s"]) == ("auto", "auto")


def test_simulate_replays_the_runs_choice_each_round(tmp_path):
    pool = _cubic_pool(tmp_path, n=300, seed=1)
    full = pd.DataFrame({"id": pool["id"], "x": pool["x"], "target": pool["target"]})
    full.to_parquet(tmp_path / "pool_t.parquet", index=False)
    full.iloc[:60].drop(columns="id").to_parquet(tmp_path / "test_t.parquet", index=False)
    settings = sim.SimSettings(
        initial=10, budget=40, batch=10, seed=0, model={"kind": "auto"}, s="auto"
    )
    data = sim.load_data(str(tmp_path / "pool_t.parquet"), str(tmp_path / "test_t.parquet"))
    learner = sim.make_learner(data, settings)
    assert isinstance(learner, sim_auto.AutoLearner)
    rows = sim.run_curve(learner, settings, "random", 0)
    assert [r["n_labels"] for r in rows] == [10, 20, 30, 40] and all(
        np.isfinite(r["metric"]) for r in rows
    )
    labeled = sim.initial_rows(settings, 0, len(data.y_pool))
    state = learner.fit(labeled, None)
    stop_set = data.x_pool[stopping.stop_rows(settings.seed, len(data.x_pool))].astype(
        np.float32
    )  # what a run checks candidates on
    direct = choose_model.choose(
        learner.auto_config,
        data.x_pool[labeled].astype(np.float32),
        data.y_pool[labeled][:, None],
        x_pool=stop_set,
    )
    assert (
        state[3] == direct.model.label()
        and state[1] == pytest.approx(direct.s)
        and direct.spread is not None
    )
    assert (
        learner.config.model.label() == direct.model.label()
    )  # what rounds and stop signals are built from


def test_simulate_fits_the_mlp_when_auto_chooses_it_afresh_after_a_switch(tmp_path):
    from alloop.sim import sgdf as sim_sgdf

    rng = np.random.default_rng(5)
    x = rng.uniform(-3.0, 3.0, 300)
    full = pd.DataFrame(
        {"id": np.arange(300), "x": x, "target": np.sin(2.0 * x) + 0.02 * rng.normal(size=300)}
    )
    full.to_parquet(tmp_path / "pool.parquet", index=False)
    full.iloc[:80].drop(columns="id").to_parquet(tmp_path / "test.parquet", index=False)
    settings = sim.SimSettings(
        initial=60, budget=70, batch=10, seed=0, model={"kind": "auto", "steps": 300}, s="auto"
    )
    data = sim.load_data(str(tmp_path / "pool.parquet"), str(tmp_path / "test.parquet"))
    learner = sim.make_learner(data, settings)
    labeled = sim.initial_rows(settings, 0, len(data.y_pool))
    learner.learners["mlp 64,64"].fit(
        labeled[:50], None
    )  # an earlier MLP fit that a fresh start must not continue from
    state = learner.fit(labeled, None)
    assert (
        state[3] == "mlp 64,64"
        and learner.config.model.kind == "mlp"
        and learner.config.s == state[1]
    )
    alone = sim_sgdf.SGDFLearner(
        data,
        dataclasses.replace(settings, model={"kind": "mlp", "hidden": [64, 64], "steps": 300}),
        learner.auto_config.replace(model=fitting.model_spec("mlp").auto_marked()).with_s(state[1]),
    )
    fresh = alone.fit(labeled, None)
    np.testing.assert_allclose(
        np.asarray(state[0][0]["layers"][0]["w"]),
        np.asarray(fresh[0]["layers"][0]["w"]),
        rtol=1e-5,
        atol=1e-6,
    )
    rmse = learner.test_metric(state)
    assert np.isfinite(rmse) and rmse < 0.5 * float(
        np.std(data.y_test)
    )  # the sine is followed (the best line leaves 0.92 of the spread)
    assert learner.model(state, 0).params is state[0][0]


def test_simulate_refuses_auto_without_chosen_s(tmp_path):
    res = invoke(
        [
            "simulate",
            "--dataset",
            "diabetes",
            "--model",
            "auto",
            "--s",
            "1",
            "--reps",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        tmp_path,
    )
    assert res.code == 2 and "--model auto" in res.stderr and "Traceback" not in res.stderr


def test_candidates_are_the_configs():
    assert [c.label() for c in choose_model.candidates()] == [
        "linear",
        "poly 2",
        "poly 3",
        "mlp 64,64",
    ]
    assert len(config_mod.AUTO_CANDIDATES) == 4


def test_a_poly_model_is_its_polynomial_within_3_sd_and_goes_on_linearly_beyond():
    """The poly candidates of auto must not explode on a heavy tail's rows (docs/results.md): powers
    from 2 on stop at ±3 sd."""
    from alloop.core import models
    from alloop.sim import ridge

    model = models.poly(1, 1, 3)
    stats = models.fit_standardizer([0.0], [1.0])
    params = {"w": jnp.asarray([[0.5], [-0.25], [0.125]]), "b": jnp.asarray([1.0])}
    f = lambda z: float(model.apply(params, stats, jnp.asarray([[z]]))[0, 0])  # noqa: E731
    for z in (-2.9, -1.0, 0.3, 2.5):
        assert f(z) == pytest.approx(1.0 + 0.5 * z - 0.25 * z**2 + 0.125 * z**3, rel=1e-5)
    edge = 1.0 + 0.5 * 3 - 0.25 * 9 + 0.125 * 27
    for z in (3.5, 16.7, 100.0):
        assert f(z) == pytest.approx(
            edge + 0.5 * (z - 3.0), rel=1e-5
        )  # only the linear term keeps growing
    x = np.array([[-20.0, 0.1], [0.0, 1.0], [2.0, -4.0], [50.0, 3.0]])
    feats = ridge.make_features({"kind": "poly", "degree": 3}, np.zeros(2), np.ones(2))
    np.testing.assert_allclose(
        feats(x)[:, :-1], np.asarray(models.poly_features(jnp.asarray(x), 3)), rtol=1e-6
    )  # simulate's ridge = the run's model


# --- the pool check: a flexible fit that varies more on the pool than the labels allow is ruled out


def test_pool_spread_is_the_variance_of_the_exact_fit_on_the_pool_over_the_labels():
    """Against closed-form ridge in numpy (simulate's learner): the fit at s on every label, its
    predictions on the pool."""
    from alloop.sim import ridge

    x, y = _xy(lambda x: x[:, 0] ** 2 + x[:, 1], n=25, seed=5)
    x_pool = np.random.default_rng(6).normal(scale=1.5, size=(300, 2)).astype(np.float32)
    for label, s in (("linear", 0.7), ("poly 3", 2.0)):
        spec = next(c for c in choose_model.candidates() if c.label() == label)
        feats = ridge.make_features(spec.to_json(), np.zeros(2), np.ones(2))
        fit = ridge.fit_ridge(
            feats(x.astype(np.float64)),
            y[:, 0].astype(np.float64),
            s,
            ridge.penalty(feats(x[:1]).shape[1]),
        )
        want = np.var(feats(x_pool.astype(np.float64)) @ fit.theta) / np.var(y[:, 0], ddof=1)
        assert choose_s_mod.pool_spread(
            _config(2).replace(model=spec), x, y, s, x_pool
        ) == pytest.approx(want, rel=1e-6)


def test_the_grids_spread_is_its_chosen_folds_predictions_on_the_pool():
    """The MLP's spread: the chosen s's fold trainings (each trained alone here), their pool
    variance averaged."""
    from alloop.core import objective, sgdf

    x, y = _xy(lambda x: np.sin(2.0 * x[:, 0]) + x[:, 1], n=45, seed=2)
    x_pool = np.random.default_rng(3).normal(size=(200, 2)).astype(np.float32)
    config = _config(2).replace(model=fitting.model_spec("mlp", hidden=(8,)))
    grid, steps = (0.5, 50.0), 150
    got = choose_s_mod.choose_grid(config, x, y, grid=grid, steps=steps, x_pool=x_pool)
    assert (
        got.s == 0.5
    )  # a sine: the weaker penalty wins (so the spread must come from the first s's folds)
    tc = choose_s_mod.tune_config(config)
    yt = fitting.make_targets(config, y, fitting.target_stats(config, y))
    init = fitting.build_model(config).init(jax.random.PRNGKey(config.seed))
    problem = fitting.build_problem(config, init)
    variances = []
    for m in hyper.fold_masks(len(x), choose_s_mod.n_folds(len(x), tc), tc.seed):
        tr = m > 0
        cfg = sgdf.TrainConfig.from_dict(
            {
                **fitting.train_config(config, int(tr.sum())).to_dict(),
                "epochs": steps,
                "batch_size": int(tr.sum()),
                "tangent_every": 0,
            }
        )
        state, _ = sgdf.fit(problem, objective.make_data(x[tr], yt[tr]), got.s, cfg, params=init)
        variances.append(
            np.var(
                np.asarray(problem.model.apply(state.params, problem.stats, jnp.asarray(x_pool)))[
                    :, 0
                ]
            )
        )
    assert got.spread == pytest.approx(np.mean(variances) / np.var(yt[:, 0], ddof=1), rel=5e-3)


def test_a_polynomial_that_runs_wild_on_the_pool_is_ruled_out_though_its_cv_is_lowest():
    """Labels near 0 of a target with curvature there: poly 3 cross-validates best. On a pool that
    reaches further (where its cubic term grows, and the true target is bounded), its predictions
    vary far more than the labels: it is ruled out, and the choice says why. On a pool like the
    labels, it stays the choice."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1.0, 1.0, size=(30, 1)).astype(np.float32)
    y = (np.tanh(2.0 * x[:, 0]) + 0.02 * rng.normal(size=30))[
        :, None
    ]  # bounded: |y| < 1 everywhere
    config = _config(1)
    near = rng.uniform(-1.0, 1.0, size=(400, 1)).astype(np.float32)
    far = rng.uniform(-3.0, 3.0, size=(400, 1)).astype(np.float32)
    plain = choose_model.choose(config, x, y)
    assert plain.model.label() == "poly 3" and plain.spread is None
    assert choose_model.choose(config, x, y, x_pool=near).model.label() == "poly 3"
    guarded = choose_model.choose(config, x, y, x_pool=far)
    assert guarded.model.label() != "poly 3" and "poly 3 ruled out" in guarded.reason
    # the rule, from the recorded figures: ruled out exactly when above Var y's upper limit plus its
    # CV loss and above linear's
    from scipy import stats

    limit = 29 / stats.chi2.ppf(0.05, 29)  # the exact quantile: 30 labels
    assert choose_model.variance_limit(30) == pytest.approx(limit, rel=2e-3)
    for label, spread in guarded.spread.items():
        out = label != "linear" and spread > max(
            limit + guarded.cv_loss[label], guarded.spread["linear"]
        )
        assert (f"{label} ruled out" in guarded.reason) == out
    assert guarded.spread["poly 3"] > limit + guarded.cv_loss["poly 3"]
    assert json.loads(json.dumps(guarded.record()))["spread"]["poly 3"] == pytest.approx(
        guarded.spread["poly 3"]
    )


def test_the_linear_model_is_never_ruled_out():
    x, y = _xy(lambda x: 3.0 * x[:, 0], n=20, seed=8)
    wide = (
        np.random.default_rng(9).normal(scale=10.0, size=(300, 2)).astype(np.float32)
    )  # linear's own predictions vary 100×
    picked = choose_model.choose(_config(2), x, y, x_pool=wide)
    assert picked.spread["linear"] > 10.0 and "linear ruled out" not in picked.reason
    assert picked.model.label() == "linear"


# --- the one-standard-error rule ------------------------------------------------------------------


def _refit_rows(spec, x, y, s, masks):
    """Each label's held-out squared error (standardized target) from numpy ridge refitted on its
    fold's other rows."""
    from alloop.sim import ridge

    config = _config(x.shape[1]).replace(model=spec)
    yt = fitting.make_targets(config, y, fitting.target_stats(config, y))[:, 0]
    a = ridge.make_features(
        spec.to_json(), config.standardizer["mean"], config.standardizer["std"]
    )(x)
    rows = np.zeros(len(x))
    for m in masks:
        tr, va = m > 0, m == 0
        fit = ridge.fit_ridge(a[tr], yt[tr], s, ridge.penalty(a.shape[1]))
        rows[va] = (a[va] @ fit.theta - yt[va]) ** 2
    return rows


@pytest.mark.parametrize("n", [20, 45])  # LOOCV (one fold per label) and 5-fold
def test_each_labels_held_out_loss_is_its_fold_refitted_without_it(n):
    x, y = _xy(lambda x: x[:, 0] ** 2 + x[:, 1], n=n, seed=4, noise=0.3)
    for spec in (fitting.model_spec("linear"), fitting.model_spec("poly", degree=2)):
        config = _config(2).replace(model=spec)
        got = choose_s_mod.choose_s(config, x, y)
        tc = choose_s_mod.tune_config(config)
        masks = hyper.fold_masks(n, choose_s_mod.n_folds(n, tc), tc.seed)
        np.testing.assert_allclose(
            got.row_loss, _refit_rows(spec, x, y, got.s, masks), rtol=1e-6, atol=1e-9
        )
        assert got.row_loss.mean() == pytest.approx(got.cv_loss, rel=1e-9)
        closed = choose_s_mod.choose_s(
            config, x, y, mode="loocv"
        )  # the closed form's leave-one-out rows
        np.testing.assert_allclose(
            closed.row_loss,
            _refit_rows(spec, x, y, closed.s, 1.0 - np.eye(n)),
            rtol=1e-6,
            atol=1e-9,
        )


def _one_large_count(seed=6, n=30):
    """A linear target whose label furthest out in x0 carries a large count (+3 noise sd's ×10): the
    polynomials bend toward that one label, and their lowest mean CV loss is that label's doing."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 2)).astype(np.float32)
    y = 0.5 * x[:, 0] + x[:, 1] + 0.3 * rng.normal(size=n)
    y[np.argmax(np.abs(x[:, 0]))] += 3.0
    return x, y[:, None]


def _row_losses(x, y) -> dict:
    """Each candidate's per-label held-out losses at its own chosen s, fitted alone (label ->
    (n,))."""
    return {
        spec.label(): fitting_choose(spec, x, y)[1].row_loss
        for spec in choose_model.candidates(len(x), _config(2))
    }


def test_a_flexible_models_lower_cv_carried_by_one_label_does_not_choose_it():
    x, y = _one_large_count()
    picked = choose_model.choose(_config(2), x, y)
    lowest = min(picked.cv_loss, key=picked.cv_loss.get)
    assert lowest != "linear"  # by the mean alone, a polynomial
    assert picked.model.label() == "linear" and "within one standard error" in picked.reason
    # the rule from each candidate's per-label losses, written out: linear's excess over the lowest
    # is under one SE
    rows = _row_losses(x, y)
    d = rows["linear"] - rows[lowest]
    assert d.mean() == pytest.approx(picked.cv_loss["linear"] - picked.cv_loss[lowest], rel=1e-6)
    assert 0.0 < d.mean() <= d.std(ddof=1) / np.sqrt(len(d))
    # without that label, the polynomial's advantage is gone: it was that one label's
    out = np.argmax(np.abs(d))
    assert np.delete(d, out).mean() < 0.25 * d.mean()


def test_a_flexible_model_in_use_stays_while_it_leads_the_one_se_choice_by_the_margin():
    """Adopted on a lead beyond one SE, a flexible model is not dropped the round its lead dips
    inside it (on elec_demand the choice flapped between poly 3 and the MLP every round), but stays
    only while it still leads the simpler choice: within one SE of the lowest is not enough (on
    doctor_visits that held an MLP 80 labels)."""
    x, y = _one_large_count()
    fresh = choose_model.choose(_config(2), x, y)
    assert fresh.model.label() == "linear"  # from scratch, the one-SE rule
    rows = _row_losses(x, y)
    lowest = min(fresh.cv_loss, key=fresh.cv_loss.get)
    for now in ("poly 2", "poly 3"):
        d = rows[now] - rows[lowest]
        assert (
            d.mean() <= d.std(ddof=1) / np.sqrt(len(d)) + 1e-12
        )  # both within one SE of the lowest, written out
    # poly 3's CV loss is below linear's by more than 2%, poly 2's is not: poly 3 stays, poly 2
    # gives way
    lead = rows["linear"].mean() / rows["poly 3"].mean() - 1.0
    assert (
        lead > choose_model.SWITCH_MARGIN
        and rows["poly 2"].mean() * (1.0 + choose_model.SWITCH_MARGIN) >= rows["linear"].mean()
    )
    poly3, poly2 = fitting.model_spec("poly", degree=3), fitting.model_spec("poly", degree=2)
    kept = choose_model.choose(_config(2), x, y, current=poly3)
    assert (
        kept.model.label() == "poly 3"
        and not kept.switched
        and kept.reason.startswith("kept poly 3")
        and "below linear's" in kept.reason
    )
    moved = choose_model.choose(_config(2), x, y, current=poly2)
    assert (
        moved.model.label() == "linear"
        and moved.switched
        and "does not lead it by more than 2%" in moved.reason
    )
    # the margin is the edge: just under poly 3's lead it stays, just over it gives way
    assert (
        choose_model.choose(_config(2), x, y, current=poly3, margin=0.9 * lead).model.label()
        == "poly 3"
    )
    assert (
        choose_model.choose(_config(2), x, y, current=poly3, margin=1.1 * lead).model.label()
        == "linear"
    )


@pytest.mark.parametrize("seed", [1, 3])
def test_a_model_in_use_beaten_by_more_than_one_standard_error_gives_way(seed):
    x, y = _xy(lambda x: 2.0 * x[:, 0] - x[:, 1], n=30, seed=seed, noise=0.5)
    rows = _row_losses(x, y)
    d = rows["poly 3"] - rows["linear"]
    assert d.mean() > max(
        d.std(ddof=1) / np.sqrt(len(d)), choose_model.SWITCH_MARGIN * rows["linear"].mean()
    )
    moved = choose_model.choose(_config(2), x, y, current=fitting.model_spec("poly", degree=3))
    assert (
        moved.model.label() == "linear"
        and moved.switched
        and "switched from poly 3 to linear" in moved.reason
    )


def test_paired_se_is_the_standard_error_of_the_mean_difference():
    a, b = np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.0, 1.0, 1.0, 1.0])
    d = a - b
    assert choose_model.paired_se(a, b) == pytest.approx(
        np.sqrt(np.sum((d - d.mean()) ** 2) / 3) / 2
    )
    assert choose_model.paired_se(a, None) == 0.0 and choose_model.paired_se(a[:1], b[:1]) == 0.0
    # one label alone: its difference D makes mean D/n and standard error D/n, never more than one
    # SE apart
    one = np.zeros(50)
    one[7] = 9.0
    assert choose_model.paired_se(one, np.zeros(50)) == pytest.approx(one.mean())
