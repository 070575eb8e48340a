"""`alloop simulate` and its pieces: the loop end to end, resume, determinism, the summary's
arithmetic, the closed forms (ridge tangent against the core, LOOCV against retraining) and the
strategies' contracts."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from alloop import strategies
from alloop.commands import common
from alloop.errors import UserError
from alloop.sim import engines as sim_engines
from alloop.sim import figure as sim_figure
from alloop.sim import ridge as sim_learners
from alloop.sim import simulate as sim
from alloop.sim import summary as sim_summary
from alloop.strategies import TrainedModel, research
from alloop.training import fit as fitting

TINY = sim.SimSettings(initial=5, budget=25, batch=5, seed=3)
EXPECTED_N = [5, 10, 15, 20, 25]
ALL = sim.strategy_names()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> sim.SimData:
    """A 120-row pool and 40-row test set: a linear truth with a bend and noise, written as
    Parquet."""
    folder = tmp_path_factory.mktemp("sim-data")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(160, 3)) * [1.0, 2.0, 0.5]
    y = x @ [1.5, -0.7, 2.0] + 0.4 * x[:, 0] ** 2 + 0.3 * rng.normal(size=160)
    df = pd.DataFrame(x, columns=["a", "b", "c"]).assign(target=y)
    df.insert(0, "id", np.arange(160))
    df.iloc[:120].to_parquet(folder / "pool.parquet", index=False)
    df.iloc[120:].to_parquet(folder / "test.parquet", index=False)
    return sim.load_data(str(folder / "pool.parquet"), str(folder / "test.parquet"), name="tiny")


def curves(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "curves.csv")


# --- the loop end to end ------------------------------------------------------------------------


def test_tiny_simulation_end_to_end(tiny, tmp_path):
    summary = sim.simulate(tiny, TINY, ALL, reps=2, out=tmp_path, jobs=1)
    for name in ("curves.csv", "summary.md", "summary.json", "curves.png", "config.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    df = curves(tmp_path)
    assert list(df.columns) == list(sim.CURVE_COLUMNS + sim.SIGNAL_COLUMNS)
    assert len(df) == len(ALL) * 2 * len(EXPECTED_N)
    for (strategy, rep), g in df.groupby(["strategy", "rep"]):
        assert list(g["n_labels"]) == EXPECTED_N, (strategy, rep)
        assert np.all(np.isfinite(g["metric"])) and np.all(g["seconds"] >= 0)
    # every strategy starts a repetition from the same initial labels, so from the same model
    first = df[df["n_labels"] == 5].groupby("rep")["metric"].nunique()
    assert (first == 1).all()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["strategies"]["random"]["relative_area"] == 1.0
    assert (
        set(on_disk["strategies"]) == set(ALL)
        and summary["strategies"].keys() == on_disk["strategies"].keys()
    )
    assert "| sld-topk |" in (tmp_path / "summary.md").read_text()


def test_same_seed_same_numbers_in_any_number_of_processes(tiny, tmp_path):
    few = ["sld", "random", "committee", "sld-kpp"]
    sim.simulate(tiny, TINY, few, reps=2, out=tmp_path / "a", jobs=1)
    sim.simulate(tiny, TINY, few, reps=2, out=tmp_path / "b", jobs=2)
    key = ["strategy", "rep", "n_labels"]
    a = curves(tmp_path / "a").sort_values(key).reset_index(drop=True)
    b = curves(tmp_path / "b").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[[*key, "metric"]], b[[*key, "metric"]], check_exact=True)
    other = sim.simulate(
        tiny,
        sim.SimSettings(**{**TINY.to_dict(), "seed": 4}),
        ["random"],
        reps=1,
        out=tmp_path / "c",
        jobs=1,
    )
    assert (
        other["strategies"]["random"]["final"]
        != json.loads((tmp_path / "a" / "summary.json").read_text())["strategies"]["random"][
            "final"
        ]
    )


def test_resume_skips_finished_curves_and_redoes_a_torn_one(tiny, tmp_path, monkeypatch):
    calls = []
    real = sim.run_curve
    monkeypatch.setattr(
        sim_engines, "run_curve", lambda *a, **k: calls.append(a[2:4]) or real(*a, **k)
    )
    sim.simulate(tiny, TINY, ["sld", "random"], reps=1, out=tmp_path, jobs=1)
    assert calls == [("sld", 0), ("random", 0)]
    before = (tmp_path / "curves.csv").read_text()

    calls.clear()
    sim.simulate(tiny, TINY, ["sld", "random"], reps=2, out=tmp_path, jobs=1)
    assert calls == [("sld", 1), ("random", 1)]
    assert (tmp_path / "curves.csv").read_text().startswith(before)

    # a crash mid-append: the last curve lost two rows and the file ends in half a line
    lines = (tmp_path / "curves.csv").read_text().splitlines(keepends=True)
    torn = lines[-1].split(",")[:2]
    (tmp_path / "curves.csv").write_text("".join(lines[:-2]) + ",".join(torn))
    calls.clear()
    sim.simulate(tiny, TINY, ["sld", "random"], reps=2, out=tmp_path, jobs=1)
    assert calls == [("random", 1)]
    df = curves(tmp_path)
    assert df.groupby(["strategy", "rep"]).size().eq(len(EXPECTED_N)).all() and len(df) == 4 * len(
        EXPECTED_N
    )
    redone = df[(df.strategy == "random") & (df.rep == 1)]["metric"].to_numpy()
    original = pd.read_csv(io.StringIO("".join(lines)))
    np.testing.assert_array_equal(
        redone, original[(original.strategy == "random") & (original.rep == 1)]["metric"].to_numpy()
    )


def test_other_settings_in_the_same_directory_are_refused(tiny, tmp_path):
    sim.simulate(tiny, TINY, ["random"], reps=1, out=tmp_path, jobs=1)
    with pytest.raises(UserError, match="other settings"):
        sim.simulate(
            tiny,
            sim.SimSettings(**{**TINY.to_dict(), "batch": 4}),
            ["random"],
            reps=1,
            out=tmp_path,
            jobs=1,
        )


def test_a_directory_in_use_is_refused(tiny, tmp_path):
    from alloop.io.lock import run_lock

    with run_lock(tmp_path):
        with pytest.raises(UserError, match="in use by another alloop simulate"):
            sim.simulate(tiny, TINY, ["random"], reps=1, out=tmp_path, jobs=1)
    assert not (tmp_path / "curves.csv").exists()


@pytest.mark.parametrize(
    "settings, strategy_list, match",
    [
        (sim.SimSettings(initial=1), ["random"], "--initial"),
        (sim.SimSettings(initial=10, budget=10), ["random"], "--budget"),
        (sim.SimSettings(s=0.0), ["random"], "--s"),
        (sim.SimSettings(s="loocv", model={"kind": "mlp"}), ["random"], "--s"),
        (sim.SimSettings(), ["sld", "nope"], "unknown strategy 'nope'"),
    ],
)
def test_bad_settings_name_the_fix(tiny, tmp_path, settings, strategy_list, match):
    with pytest.raises(UserError, match=match):
        sim.simulate(tiny, settings, strategy_list, reps=1, out=tmp_path, jobs=1)


def test_cli_simulate_and_figure(tiny, tmp_path):
    from alloop.cli import app

    pool = tmp_path / "pool.parquet"
    test = tmp_path / "test.parquet"
    pd.DataFrame(tiny.x_pool, columns=list(tiny.features)).assign(target=tiny.y_pool).rename_axis(
        "id"
    ).reset_index().to_parquet(pool)
    pd.DataFrame(tiny.x_test, columns=list(tiny.features)).assign(target=tiny.y_test).rename_axis(
        "id"
    ).reset_index().to_parquet(test)
    runner = CliRunner()
    args = [
        "simulate",
        "--pool",
        str(pool),
        "--test",
        str(test),
        "--strategies",
        "sld,random",
        "--reps",
        "1",
        "--initial",
        "5",
        "--budget",
        "15",
        "--batch",
        "5",
        "--out",
        str(tmp_path / "o"),
        "--jobs",
        "1",
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["strategies"]["sld"]["reps"] == 1
    res = runner.invoke(app, ["figure", "paper-1d", "--out", str(tmp_path / "fig.png"), "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the summary's arithmetic -------------------------------------------------------------------


def _rows(strategy, table, n=(10, 20, 30)):
    return [
        {"strategy": strategy, "rep": r, "n_labels": k, "metric": m, "seconds": 0.0}
        for r, row in enumerate(table)
        for k, m in zip(n, row)
    ]


def test_relative_area_and_friends_on_hand_made_curves():
    # random: areas 40 and 60 (trapezoids with step 10); final mean metric (1 + 2) / 2 = 1.5
    rows = _rows("random", [[3, 2, 1], [4, 3, 2]])
    # fast: areas 22.5 and 72.5 -> relative area (22.5 + 72.5) / (40 + 60) = 0.95; per rep 0.5625
    # and 72.5/60
    rows += _rows("fast", [[2, 1, 0.5], [4, 3.5, 3.5]])
    rows += _rows("flat", [[3, 3, 3], [3, 3, 3]])
    s = sim_summary.summarize(rows, ["random", "fast", "flat"], TINY, "hand")["strategies"]
    assert sim_summary.area([10, 20, 30], [2, 1, 0.5]) == pytest.approx(22.5)
    assert s["fast"]["relative_area"] == pytest.approx(95 / 100)
    assert s["fast"]["relative_area_se"] == pytest.approx(
        np.std([0.5625, 72.5 / 60], ddof=1) / np.sqrt(2)
    )
    assert (s["fast"]["wins"], s["fast"]["losses"]) == (1, 1)
    # mean curve of fast: 3, 2.25, 2.0 never reaches random's final 1.5
    assert s["fast"]["labels_to_match_random"] is None
    # flat ties random in the second repetition: a tie is neither a win nor a loss
    assert s["flat"]["relative_area"] == pytest.approx(120 / 100) and (
        s["flat"]["wins"],
        s["flat"]["losses"],
    ) == (0, 1)
    assert s["random"]["labels_to_match_random"] == 30 and s["random"]["relative_area"] == 1.0
    easy = sim_summary.summarize(
        rows + _rows("easy", [[2, 1, 1], [2, 1, 1]]), ["easy"], TINY, "hand"
    )["strategies"]["easy"]
    assert easy["labels_to_match_random"] == 20 and easy["at"]["30"]["mean"] == 1.0


# --- closed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("free_bias", [True, False])
def test_loocv_closed_form_equals_leave_one_out_retraining(rng, free_bias):
    a = np.c_[rng.normal(size=(14, 4)), np.ones(14)]
    y = a[:, :4] @ rng.normal(size=4) + 0.5 + 0.2 * rng.normal(size=14)
    d = sim_learners.penalty(5) if free_bias else np.ones(5)
    for s in (0.01, 0.7, 30.0):
        brute = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            theta = sim_learners.fit_ridge(a[keep], y[keep], s, d).theta
            brute.append(a[i] @ theta - y[i])
        np.testing.assert_allclose(
            sim_learners.loocv_residuals(a, y, s, d), brute, rtol=1e-9, atol=1e-12
        )


def test_closed_form_ridge_matches_the_core_tangent_and_sld(rng):
    import jax.numpy as jnp

    from alloop.core import losses, models, objective, regularizers, scorers, tangents

    x = rng.normal(size=(30, 2)) * [2.0, 0.5] + [1.0, -3.0]
    y = np.sin(x[:, 0]) + 0.3 * x[:, 1] + 0.1 * rng.normal(size=30)
    feats = sim_learners.make_features({"kind": "poly", "degree": 3}, x.mean(0), x.std(0))
    a = feats(x)
    fit = sim_learners.fit_ridge(a, y, 0.8, sim_learners.penalty(a.shape[1]))

    model = models.poly(2, 1, 3)
    problem = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(model.init(None)),
        models.fit_standardizer(x.mean(0), x.std(0)),
    )
    data = objective.make_data(x, y[:, None])
    core = tangents.exact(problem, sim_learners.core_params(fit.theta), 0.8, data).tangent
    flat = np.r_[np.ravel(core["w"]), np.ravel(core["b"])]
    np.testing.assert_allclose(flat, fit.tangent, rtol=2e-3, atol=1e-5)

    noise = np.float32(fit.noise)
    sld = scorers.sld(
        problem, sim_learners.core_params(fit.theta), sim_learners.core_params(fit.tangent), [noise]
    )
    core_sld = np.asarray(sld(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(
        core_sld, 4 * fit.noise * (a @ fit.tangent) ** 2, rtol=1e-3, atol=1e-6
    )


def test_paper_figure_finite_difference_converges_to_the_tangent():
    x = np.array([-1.0, -0.85, -0.7, 0.7, 0.85, 1.0])
    y = np.sin(3 * x) + 0.5 * np.cos(2 * x) + np.array([0.03, -0.05, 0.02, 0.04, -0.01, 0.0])
    errors = [sim_figure.analyse(x, y, r)["fd_rel_error"] for r in (0.2, 0.02, 0.002)]
    # a forward difference: the error shrinks in proportion to δ
    assert (
        errors[2] < 5e-3
        and errors[0] / errors[1] == pytest.approx(10, rel=0.3)
        and errors[1] / errors[2] == pytest.approx(10, rel=0.3)
    )
    res = sim_figure.analyse(x, y)
    assert abs(res["sld_argmax_x"]) < 0.7  # the largest SLD sits in the gap


# --- strategies ---------------------------------------------------------------------------------


def _fitted(data, labeled=8, seed=5, model=None):
    """A ridge learner's round over ``data``: (learner, labeled rows, round)."""
    learner = sim.make_learner(data, sim.SimSettings(model=model or {"kind": "poly", "degree": 2}))
    assert isinstance(learner, sim_learners.RidgeLearner)
    idx = np.random.default_rng(seed).choice(len(data.y_pool), labeled, replace=False)
    return learner, idx, sim.round_of(learner, learner.fit(idx, None), idx, seed)


@pytest.mark.parametrize("name", strategies.names("regression"))
def test_every_strategy_picks_k_distinct_unlabeled_rows_reproducibly(tiny, name):
    learner, idx, rnd = _fitted(tiny)
    strat = strategies.get(name)
    picks = [strategies.select(strat, tiny.open_pool(), rnd, tiny.ids[idx], 7) for _ in range(2)]
    ids = picks[0].ids
    assert picks[0].strategy == name and picks[0].note is None
    assert len(ids) == 7 and len(set(ids)) == 7 and not set(ids) & set(tiny.ids[idx])
    np.testing.assert_array_equal(ids, picks[1].ids)
    assert len(picks[0].prob) == 7 and len(picks[0].scores) == 7


def test_the_simulation_runs_the_very_strategy_objects_of_alloop_query(tiny, monkeypatch):
    """One registry: every strategy a live query runs is the object the simulation selects with."""
    seen = []
    real = strategies.select
    monkeypatch.setattr(
        strategies, "select", lambda strat, *a, **kw: seen.append(strat) or real(strat, *a, **kw)
    )
    settings = sim.SimSettings(initial=5, budget=10, batch=5, seed=1)
    learner = sim.make_learner(tiny, settings)
    for name in strategies.names("regression", live=True):
        seen.clear()
        sim.run_curve(learner, settings, name, 0)
        assert seen and all(s is strategies.for_query(name, "regression") for s in seen), name


def test_rank_one_update_equals_refitting_with_the_predicted_label(tiny):
    learner, idx, rnd = _fitted(tiny)
    x = tiny.x_pool
    a, hinv = rnd.model.gradient_features(x), rnd.model.curvature_inverse(rnd.labeled_x)
    u = rnd.model.outputs(x)[1]
    j = int(np.setdiff1d(np.arange(len(x)), idx)[3])
    u_new, _ = research.rank_one(a, hinv, u, j)
    rows = np.r_[idx, j]
    y = np.r_[tiny.y_pool[idx], rnd.model.predict(x[j : j + 1])[0]]
    refit = sim_learners.fit_ridge(learner.a_pool[rows], y, 1.0, learner.d)
    np.testing.assert_allclose(
        u_new, learner.a_pool @ refit.tangent, rtol=2e-3, atol=1e-5
    )  # float32 model outputs


def test_lookahead_gain_is_the_drop_of_the_total_sld_after_refitting_with_the_predicted_label(tiny):
    """sld-lookahead's score: Σ over the kept rows of SLD now, minus the same sum from a ridge
    refitted with x labeled by its own prediction (no rank-one algebra on the refit side)."""
    learner, idx, rnd = _fitted(tiny)
    x = tiny.x_pool
    a, hinv = rnd.model.gradient_features(x), rnd.model.curvature_inverse(rnd.labeled_x)
    u = rnd.model.outputs(x)[1]
    rest = np.setdiff1d(np.arange(len(x)), idx)
    over = rest[::3]
    cand = rest[:5]
    gain = research.lookahead_gain(a, hinv, u, over)[cand]
    refitted = []
    for j in cand:
        rows = np.r_[idx, j]
        y = np.r_[tiny.y_pool[idx], rnd.model.predict(x[j : j + 1])[0]]
        u_new = (
            learner.a_pool @ sim_learners.fit_ridge(learner.a_pool[rows], y, 1.0, learner.d).tangent
        )
        refitted.append(np.sum(u[over] ** 2) - np.sum(u_new[over] ** 2))
    np.testing.assert_allclose(gain, refitted, rtol=5e-3, atol=1e-6 * np.sum(u[over] ** 2))
    assert np.ptp(gain) > 0.1 * np.max(
        np.abs(gain)
    )  # the rows differ: a constant gain would pass a looser check


def _pool_variance(rnd, labeled_x, a, c):
    """tr(H⁻¹C) with H⁻¹ refitted from scratch over ``labeled_x`` (no rank-one algebra)."""
    return float(np.trace(rnd.model.curvature_inverse(labeled_x) @ c))


def test_variance_gain_is_the_drop_of_the_pool_variance_after_labeling(tiny):
    _, idx, rnd = _fitted(tiny)
    x = tiny.x_pool
    a = rnd.model.gradient_features(x)
    c = a.T @ a / len(a)
    before = _pool_variance(rnd, rnd.labeled_x, a, c)
    rest = np.setdiff1d(np.arange(len(x)), idx)[:6]
    gain = research.variance_gain(a[rest], rnd.model.curvature_inverse(rnd.labeled_x), c)
    after = [_pool_variance(rnd, np.r_[rnd.labeled_x, x[j : j + 1]], a, c) for j in rest]
    np.testing.assert_allclose(gain, before - np.asarray(after), rtol=1e-3, atol=1e-9)
    assert np.all(gain > 0)


def test_vr_picks_the_row_that_lowers_the_pool_variance_most_then_the_best_given_it(tiny):
    _, idx, rnd = _fitted(tiny)
    rest = np.setdiff1d(np.arange(len(tiny.x_pool)), idx)
    x = tiny.x_pool[rest]
    kept = strategies.stream.Kept(np.zeros(len(rest)), tiny.ids[rest], x.astype(np.float32))
    pick = research.vr_pick(kept, rnd, 2)
    a = rnd.model.gradient_features(x)
    c = a.T @ a / len(a)
    first = [_pool_variance(rnd, np.r_[rnd.labeled_x, x[j : j + 1]], a, c) for j in range(len(x))]
    assert pick.idx[0] == int(np.argmin(first))
    j0 = pick.idx[0]
    second = [
        _pool_variance(rnd, np.r_[rnd.labeled_x, x[[j0, j]]], a, c) if j != j0 else np.inf
        for j in range(len(x))
    ]
    assert pick.idx[1] == int(np.argmin(second))
    assert pick.scores[0] > pick.scores[1] > 0


def test_gradient_features_of_a_linear_model_are_its_design_rows(tiny):
    learner, idx, rnd = _fitted(tiny, model={"kind": "linear"})
    a = rnd.model.gradient_features(tiny.x_pool)  # θ flattened as (b, w): a(x) = [1, z]
    np.testing.assert_allclose(
        a, np.c_[learner.a_pool[:, -1:], learner.a_pool[:, :-1]], rtol=1e-5, atol=1e-5
    )
    hinv = rnd.model.curvature_inverse(rnd.labeled_x)
    m = learner.a_pool[idx].T @ learner.a_pool[idx] + np.diag(learner.d)
    perm = np.r_[len(m) - 1, np.arange(len(m) - 1)]
    np.testing.assert_allclose(hinv, np.linalg.inv(m)[np.ix_(perm, perm)], rtol=1e-3, atol=1e-5)


def test_lure_weights_make_power_sampling_unbiased():
    rng = np.random.default_rng(0)
    n, m, sims = 12, 4, 20000
    loss = np.linspace(0.0, 3.0, n) ** 2
    weights = np.linspace(0.2, 2.0, n)
    weighted, plain = [], []
    for _ in range(sims):
        idx, prob = research.power_sample(weights, m, rng)
        weighted.append(np.mean(research.lure_weights(prob, n) * loss[idx]))
        plain.append(np.mean(loss[idx]))
    assert np.mean(weighted) == pytest.approx(loss.mean(), rel=0.02)
    assert (
        np.mean(plain) > 1.1 * loss.mean()
    )  # without the weights the heavy rows bias the estimate
    np.testing.assert_array_equal(research.lure_weights(1.0 / (n - np.arange(m)), n), np.ones(m))


def test_mlp_learner_runs_the_loop_with_a_live_tangent(tiny):
    settings = sim.SimSettings(
        initial=6, budget=14, batch=4, seed=1, model={"kind": "mlp", "hidden": [4], "steps": 150}
    )
    learner = sim.make_learner(tiny, settings)
    rows = sim.run_curve(learner, settings, "sld", 0)
    assert [r["n_labels"] for r in rows] == [6, 10, 14] and all(
        np.isfinite(r["metric"]) for r in rows
    )
    labeled = sim.initial_rows(settings, 0, len(tiny.y_pool))
    rnd = sim.round_of(learner, learner.fit(labeled, None), labeled, 0)
    assert rnd.model.tangent_health() == "ok"
    assert rnd.model.gradient_features(tiny.x_pool[:9]).shape == (9, rnd.model.n_params)


# --- the simulation replays the live loop ---------------------------------------------------------


def test_the_closed_form_fast_path_is_what_sgdf_training_converges_to(tiny):
    """simulate fits linear models in closed form; `alloop train` runs SGDF: same predictions and
    tangent."""
    settings = sim.SimSettings(s=0.5, model={"kind": "poly", "degree": 2})
    learner = sim.make_learner(tiny, settings)
    idx = np.arange(40)
    closed = learner.model(learner.fit(idx, None), 0)
    config = learner.config.replace(train={**learner.config.train, "min_steps": 3000})
    live = fitting.fit(config, tiny.x_pool[idx].astype(np.float32), tiny.y_pool[idx][:, None])
    pred_live = fitting.predict(config, live.params, tiny.x_pool, live.target)[:, 0]
    pred_closed = closed.predict(tiny.x_pool)
    assert np.sqrt(np.mean((pred_live - pred_closed) ** 2)) < 0.01 * np.std(pred_closed)
    u_live = TrainedModel(
        problem=closed.problem, params=live.params, tangent=live.tangent, noise=closed.noise, s=0.5
    ).outputs(tiny.x_pool)[1]
    u_closed = closed.outputs(tiny.x_pool)[1]
    assert (
        u_live @ u_closed / (np.linalg.norm(u_live) * np.linalg.norm(u_closed)) > 0.999
    )  # θ̇ differs by the target scale only


@pytest.mark.parametrize(
    "strategy", ["sld", "sld-topk", "greedy", "random", "committee", "sld-seq"]
)
def test_a_simulated_round_picks_the_rows_alloop_query_picks(tiny, runs, strategy, monkeypatch):
    """Same run state (labels, model, seed): the simulation's round chooses exactly the rows of
    `alloop query`."""
    from alloop.commands.init import init_run
    from alloop.commands.query import query, trained_model
    from alloop.commands.train import train
    from alloop.io import rundir

    monkeypatch.setattr(strategies.builtin, "COMMITTEE_SIZE", 2)
    labeled = sim.initial_rows(sim.SimSettings(initial=12, seed=4), 0, len(tiny.y_pool))
    seed_file = runs.parent / "seed.csv"
    pd.DataFrame({"id": tiny.ids[labeled], "target": tiny.y_pool[labeled]}).to_csv(
        seed_file, index=False
    )
    init_run(
        "r",
        tiny.pool,
        labels=str(seed_file),
        s=0.7,
        train={"epochs": 1, "min_steps": 300, "seed": 4},
    )
    train("r")
    run = rundir.open_run("r")
    config = common.config_of(run)
    tree, meta = common.load_checkpoint(run)
    _, lx, ly = common.labeled_arrays(run, common.open_pool_of(run))
    got = pd.read_csv(query("r", k=6, strategy=strategy, seed=11)["path"])["id"].to_numpy()
    model = trained_model(run, config, tree, meta, lx, ly, 11)
    order = tiny.rows_of(run_ids := common.labeled_arrays(run, common.open_pool_of(run))[0])
    rnd = sim.round_with(
        tiny, sim.config_for(tiny, sim.SimSettings(s=0.7, seed=4)), order, 11, model
    )
    picked = strategies.select(strategies.get(strategy), tiny.open_pool(), rnd, run_ids, 6)
    np.testing.assert_array_equal(picked.ids, got)


def test_classification_is_simulated_with_the_live_softmax_model(tmp_path):
    """Three blobs: the loop runs with SGDF's softmax model and records the test error rate."""
    rng = np.random.default_rng(2)
    centers = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    labels = rng.integers(0, 3, 150)
    x = centers[labels] + rng.normal(size=(150, 2))
    df = pd.DataFrame(
        {
            "id": np.arange(150),
            "a": x[:, 0],
            "b": x[:, 1],
            "target": np.array(["red", "green", "blue"])[labels],
        }
    )
    df.iloc[:110].to_parquet(tmp_path / "pool.parquet", index=False)
    df.iloc[110:].to_parquet(tmp_path / "test.parquet", index=False)
    res = sim.run_simulation(
        pool=str(tmp_path / "pool.parquet"),
        test=str(tmp_path / "test.parquet"),
        task="classification",
        strategy_list=["margin", "sld", "random"],
        reps=1,
        out=str(tmp_path / "out"),
        jobs=1,
        model={"kind": "linear", "steps": 300},
        initial=6,
        budget=18,
        batch=6,
    )
    assert res["metric"] == "error" and set(res["strategies"]) == {"margin", "sld", "random"}
    df = curves(tmp_path / "out")
    assert df["metric"].between(0, 1).all() and list(df[df.strategy == "margin"]["n_labels"]) == [
        6,
        12,
        18,
    ]
    assert (
        df[df.n_labels == 18]["metric"].max() < 0.35
    )  # three separable blobs are learned from 18 labels
    later = df[
        df.n_labels > 6
    ]  # successive models compared by Cohen's kappa on the stop set, not by a change of values
    assert (
        later["kappa"].between(-1, 1).all()
        and df["change"].isna().all()
        and df[df.n_labels == 6]["kappa"].isna().all()
    )
    with pytest.raises(UserError, match="does not apply to classification"):
        sim.run_simulation(
            pool=str(tmp_path / "pool.parquet"),
            test=str(tmp_path / "test.parquet"),
            task="classification",
            strategy_list=["igs"],
            reps=1,
            out=str(tmp_path / "o2"),
            jobs=1,
        )


# --- stopping: the signals a simulated round records, and the report replayed from them -----------


def _signal_rows(strategy, metrics, changes, n=(10, 20, 30, 40, 50)):
    return [
        {
            "strategy": strategy,
            "rep": r,
            "n_labels": k,
            "metric": m,
            "seconds": 0.0,
            "change": c,
            "kappa": None,
            "cv_loss": None,
            "mean_sld": None,
        }
        for r, (ms, cs) in enumerate(zip(metrics, changes))
        for k, m, c in zip(n, ms, cs)
    ]


def test_the_stop_report_replays_each_rule_over_every_repetition():
    # rep 0: changes fall below 0.01 at n=30 and n=40 -> stable_predictions stops at n=40 (2 rounds
    #        in a row), metric there 2.2 against 2.0 at the budget: 10% given up, 10 labels saved;
    # rep 1: never two calm rounds in a row -> runs to the budget, nothing saved or given up.
    rows = _signal_rows(
        "sld",
        [[5, 3, 2.5, 2.2, 2.0], [6, 4, 3, 2.5, 2.5]],
        [[None, 0.2, 0.005, 0.004, 0.001], [None, 0.005, 0.3, 0.002, 0.5]],
    )
    st = sim_summary.summarize(
        rows,
        ["sld"],
        TINY,
        "hand",
        rules=sim.stopping.StopRules(change_threshold=0.01, change_rounds=2),
    )["stopping"]
    f = st["strategies"]["sld"]["stable_predictions"]
    assert (f["reps"], f["stopped"]) == (2, 1)
    assert f["labels"] == pytest.approx((40 + 50) / 2) and f["labels_saved"] == pytest.approx(
        (10 + 0) / 2
    )
    assert f["error_given_up"] == pytest.approx((0.1 + 0.0) / 2) and f[
        "error_given_up_max"
    ] == pytest.approx(0.1)
    assert st["primary"] == "stable_predictions" and st["thresholds"]["change_threshold"] == 0.01
    # other thresholds are replayed from the same rows: a looser one stops both repetitions at n=30
    loose = sim_summary.summarize(
        rows,
        ["sld"],
        TINY,
        "hand",
        rules=sim.stopping.StopRules(change_threshold=0.4, change_rounds=2),
    )["stopping"]
    g = loose["strategies"]["sld"]["stable_predictions"]
    assert g["stopped"] == 2 and g["labels"] == pytest.approx(
        (30 + 30) / 2
    )  # rep 0: 0.2, 0.005; rep 1: 0.005, 0.3
    assert "| sld | stable_predictions | 1/2 | 45 | 5 | +5.0%, +10.0% |" in sim_summary.markdown(
        sim_summary.summarize(
            rows,
            ["sld"],
            TINY,
            "hand",
            rules=sim.stopping.StopRules(change_threshold=0.01, change_rounds=2),
        )
    )
    # curves without signals (written before they were recorded) give no stop report, not a wrong
    # one
    bare = [{k: v for k, v in r.items() if k in sim.CURVE_COLUMNS} for r in rows]
    assert sim_summary.summarize(bare, ["sld"], TINY, "hand")["stopping"]["strategies"] == {}


def test_simulated_rounds_record_the_stop_signals_a_run_records(tiny, tmp_path, monkeypatch):
    """The change of the stop-set predictions between rounds, computed independently from
    closed-form ridge fits on the labels each round trained on; the CV loss when s is searched; the
    mean SLD on the stop set."""
    settings = sim.SimSettings(initial=5, budget=25, batch=5, seed=3, s=0.5)
    seen = []
    real_fit = sim_learners.RidgeLearner.fit
    monkeypatch.setattr(
        sim_learners.RidgeLearner,
        "fit",
        lambda self, labeled, w: seen.append(labeled.copy()) or real_fit(self, labeled, w),
    )
    rows = sim.run_curve(sim.make_learner(tiny, settings), settings, "sld", 0)
    x_stop = tiny.x_pool[sim.stop_rows(settings, len(tiny.y_pool))]
    assert len(x_stop) == len(tiny.y_pool)  # the pool is smaller than a stop set: all of it
    mean, std = tiny.x_pool.mean(axis=0), tiny.x_pool.std(axis=0)

    def ridge_predictions(labeled):
        a = np.c_[(tiny.x_pool[labeled] - mean) / std, np.ones(len(labeled))]
        theta = np.linalg.solve(
            a.T @ a + 0.5 * np.diag([1.0, 1.0, 1.0, 0.0]), a.T @ tiny.y_pool[labeled]
        )
        return np.c_[(x_stop - mean) / std, np.ones(len(x_stop))] @ theta

    preds = [ridge_predictions(lab) for lab in seen]
    assert (
        rows[0]["change"] is None and rows[0]["cv_loss"] is None
    )  # nothing to compare with; s = 0.5 is not searched
    for r, old, new in zip(rows[1:], preds, preds[1:]):
        expected = np.sqrt(np.mean((new - old) ** 2)) / np.std(old)
        assert r["change"] == pytest.approx(expected, rel=1e-3) and r["kappa"] is None
    assert all(r["mean_sld"] > 0 for r in rows)
    auto = sim.SimSettings(initial=5, budget=15, batch=5, seed=3, s="auto")
    assert all(
        r["cv_loss"] > 0 for r in sim.run_curve(sim.make_learner(tiny, auto), auto, "random", 0)
    )


def test_curves_written_before_the_signals_are_kept_on_resume(tiny, tmp_path, monkeypatch):
    sim.simulate(tiny, TINY, ["random"], reps=1, out=tmp_path, jobs=1)
    df = curves(tmp_path)
    old = df[list(sim.CURVE_COLUMNS)]  # a curves.csv of the previous format: five columns
    (tmp_path / "curves.csv").write_text(old.to_csv(index=False))
    calls = []
    monkeypatch.setattr(sim_engines, "run_curve", lambda *a, **k: calls.append(a[2:4]))
    summary = sim.simulate(tiny, TINY, ["random"], reps=1, out=tmp_path, jobs=1)
    assert calls == [] and summary["strategies"]["random"]["final"] == pytest.approx(
        old["metric"].iloc[-1]
    )
    again = curves(tmp_path)
    assert (
        list(again.columns) == list(sim.CURVE_COLUMNS + sim.SIGNAL_COLUMNS)
        and again["change"].isna().all()
    )


# --- diversity in the model's own space, and the uniform share ------------------------------------


def _kept_unlabeled(data, idx):
    rest = np.setdiff1d(np.arange(len(data.x_pool)), idx)
    return strategies.stream.Kept(
        np.zeros(len(rest)), data.ids[rest], data.x_pool[rest].astype(np.float32)
    )


def test_the_model_space_of_a_linear_model_is_its_inputs_so_herding_grad_is_herding(tiny):
    """a(x) = [1, z] for a linear model: the same distances as the standardized inputs, hence the
    same picks."""
    _, idx, rnd = _fitted(tiny, model={"kind": "linear"})
    kept = _kept_unlabeled(tiny, idx)
    e, e_lab = research.model_space(kept, rnd)
    np.testing.assert_allclose(e[:, 1:], rnd.z(kept.x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e_lab[:, 1:], rnd.z(rnd.labeled_x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(
        research.herding_grad_pick(kept, rnd, 6).idx, research.herding_pick(kept, rnd, 6).idx
    )


def test_the_model_space_of_an_mlp_is_a_sketch_that_keeps_its_gradient_distances(tiny):
    settings = sim.SimSettings(
        initial=6,
        budget=14,
        batch=4,
        seed=1,
        model={"kind": "mlp", "hidden": [48, 48], "steps": 100},
    )
    learner = sim.make_learner(tiny, settings)
    labeled = sim.initial_rows(settings, 0, len(tiny.y_pool))
    rnd = sim.round_of(learner, learner.fit(labeled, None), labeled, 0)
    kept = _kept_unlabeled(tiny, labeled)
    assert rnd.model.n_params > research.SKETCH_DIMS
    e, _ = research.model_space(kept, rnd)
    a = rnd.model.gradient_features(kept.x)
    assert e.shape == (len(kept.ids), research.SKETCH_DIMS)
    full, sketch = (
        np.linalg.norm(a[:40, None] - a[None, :40], axis=-1),
        np.linalg.norm(e[:40, None] - e[None, :40], axis=-1),
    )
    off = ~np.eye(40, dtype=bool)
    ratio = sketch[off] / full[off]
    assert 0.8 < np.median(ratio) < 1.2 and np.all(
        (ratio > 0.6) & (ratio < 1.4)
    )  # Johnson–Lindenstrauss at 256 dimensions
    assert not np.allclose(
        e[:, 1:4] / np.linalg.norm(e[:, 1:4]), rnd.z(kept.x) / np.linalg.norm(rnd.z(kept.x))
    )


def test_sld_lcmd_is_lcmd_on_the_gradients_weighted_by_capped_sld(tiny):
    from alloop.core import diversity

    _, idx, rnd = _fitted(tiny)
    kept = _kept_unlabeled(tiny, idx)
    e, e_lab = research.model_space(kept, rnd)
    w = research.capped_sld(kept, rnd)
    assert np.sum(w == w.max()) >= 0.1 * len(w) - 1  # capped at the 90% quantile
    np.testing.assert_array_equal(
        research.lcmd_pick_with(research.capped_sld)(kept, rnd, 5).idx,
        diversity.lcmd(e, e_lab, 5, w)[0],
    )
    np.testing.assert_array_equal(
        research.lcmd_pick_with(None)(kept, rnd, 5).idx, diversity.lcmd(e, e_lab, 5)[0]
    )


def test_the_uniform_share_of_sld_mix_is_uniform_over_the_unlabeled_rows(tiny):
    """Over many rounds' seeds every unlabeled row is as likely to be in the uniform share
    (chi-square), the share is round(0.3 k) rows, and the rest is sld's pick among the other rows,
    given the share as labeled."""
    _, idx, rnd = _fitted(tiny)
    unlabeled = np.setdiff1d(tiny.ids, tiny.ids[idx])
    mix = strategies.get("sld-mix")
    counts = {i: 0 for i in unlabeled.tolist()}
    k, share, runs = 7, round(research.MIX_SHARE * 7), 300
    for seed in range(runs):
        sel = strategies.select(mix, tiny.open_pool(), rnd._replace(seed=seed), tiny.ids[idx], k)
        assert len(set(sel.ids.tolist())) == k and not set(sel.ids.tolist()) & set(
            tiny.ids[idx].tolist()
        )
        assert np.all(np.isnan(sel.scores[:share])) and np.all(np.isfinite(sel.scores[share:]))
        for i in sel.ids[:share]:
            counts[int(i)] += 1
    observed = np.asarray(list(counts.values()), np.float64)
    expected = runs * share / len(unlabeled)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    dof = len(unlabeled) - 1
    assert chi2 < dof + 4 * np.sqrt(
        2 * dof
    )  # a uniform draw passes; a draw tilted toward SLD or leverage does not


def test_sld_mix_fills_the_rest_with_sld_seeing_the_uniform_rows_as_labeled(tiny):
    from alloop.strategies.builtin import sld_pick

    _, idx, rnd = _fitted(tiny)
    kept = _kept_unlabeled(tiny, idx)
    kept = kept._replace(scores=np.random.default_rng(0).random(len(kept.ids)))
    pick = research.mix_pick_with(sld_pick)(kept, rnd, 7)
    share = round(research.MIX_SHARE * 7)
    np.testing.assert_array_equal(pick.idx[:share], np.arange(share))
    rest = strategies.stream.Kept(kept.scores[share:], kept.ids[share:], kept.x[share:])
    seen = rnd._replace(
        labeled_x=np.r_[rnd.labeled_x, kept.x[:share]],
        labeled_y=np.r_[rnd.labeled_y, np.full((share, 1), np.nan)],
    )
    np.testing.assert_array_equal(pick.idx[share:], share + sld_pick(rest, seen, 7 - share).idx)


def test_sld_mix_auto_draws_the_share_the_labels_support_and_flags_it(tiny):
    """round(share·k) uniform rows first, flagged as uniform: the prior share while the round does
    not know which labels were uniform draws, else core.share's choice from the labels."""
    from alloop.core import share

    _, idx, rnd = _fitted(tiny, labeled=30)
    kept = _kept_unlabeled(tiny, idx)
    pick = research.mix_pick_with(research.sld_pick, research.labeled_share)
    k = 10
    unknown = pick(kept, rnd, k)
    assert unknown.uniform.tolist() == [True] * round(share.SHARE_PRIOR * k) + [False] * (
        k - round(share.SHARE_PRIOR * k)
    )
    flags = np.arange(30) < 20  # 20 uniform draws, 10 chosen otherwise
    rnd = rnd._replace(labeled_uniform=flags)
    evidence = share.choose_share(
        rnd.z(rnd.labeled_x), rnd.labeled_y[:, 0], flags, np.random.default_rng(rnd.seed)
    )
    assert (
        research.labeled_evidence(rnd) == evidence
        and evidence.n_uniform == 20
        and evidence.n_active == 10
    )
    known = pick(kept, rnd, k)
    u = max(round(evidence.share * k), 1)
    np.testing.assert_array_equal(known.idx[:u], np.arange(u))
    assert known.uniform.tolist() == [True] * u + [False] * (k - u)
    sel = strategies.select(strategies.get("sld-mix-auto"), tiny.open_pool(), rnd, tiny.ids[idx], k)
    assert sel.uniform.sum() == u and np.all(np.isnan(sel.scores[:u]))


def test_a_simulation_tells_the_strategy_which_labels_were_uniform_draws(tiny, monkeypatch):
    """The initial labels and each mixed batch's uniform share are uniform draws; every other pick
    is not."""
    seen = []
    monkeypatch.setattr(
        research, "labeled_share", lambda rnd: seen.append(rnd.labeled_uniform.copy()) or 0.3
    )
    mix = strategies.get("sld-mix-auto")
    monkeypatch.setitem(
        strategies.REGISTRY,
        "sld-mix-auto",
        dataclasses.replace(
            mix, pick=research.mix_pick_with(research.sld_pick, research.labeled_share)
        ),
    )
    settings = sim.SimSettings(initial=6, budget=26, batch=10, seed=2, model={"kind": "linear"})
    sim.run_curve(sim.make_learner(tiny, settings), settings, "sld-mix-auto", 0)
    assert [f.tolist() for f in seen] == [[True] * 6, [True] * 6 + [True] * 3 + [False] * 7]


def test_lure_weights_make_the_mixed_batch_unbiased(tiny):
    """sld-mix-iw's weights: over many draws, the LURE-weighted mean of any per-row loss over a
    mixed batch is the unlabeled rows' mean (the sld part is drawn ∝ capped SLD · D², the uniform
    part uniformly); unweighted it is not."""
    assert strategies.get("sld-mix-iw").weighted and not strategies.get("sld-mix").weighted
    _, idx, rnd = _fitted(tiny)
    kept = _kept_unlabeled(tiny, idx)
    loss = np.sum(rnd.z(kept.x) ** 2, axis=1)  # large far from the labels, where D² draws go
    pick = research.mix_pick_with(research.sld_pick)
    rng, weighted, plain = np.random.default_rng(0), [], []
    for seed in range(1500):
        order = rng.permutation(
            len(kept.ids)
        )  # the kept rows arrive in a fresh hash order every round
        p = pick(
            strategies.stream.Kept(kept.scores[order], kept.ids[order], kept.x[order]),
            rnd._replace(seed=seed),
            6,
        )
        rows = order[p.idx]
        weighted.append(np.mean(research.lure_weights(p.prob, len(kept.ids)) * loss[rows]))
        plain.append(np.mean(loss[rows]))
    assert np.mean(weighted) == pytest.approx(loss.mean(), rel=0.04)
    assert np.mean(plain) > 1.15 * loss.mean()


def test_the_model_space_is_built_a_block_at_a_time_with_the_same_result(tiny, monkeypatch):
    """Many labeled rows of a wide model must not hold all their gradient features at once: blocks,
    same sketch."""
    settings = sim.SimSettings(
        initial=6,
        budget=14,
        batch=4,
        seed=1,
        model={"kind": "mlp", "hidden": [48, 48], "steps": 100},
    )
    learner = sim.make_learner(tiny, settings)
    labeled = sim.initial_rows(settings, 0, len(tiny.y_pool))
    rnd = sim.round_of(learner, learner.fit(labeled, None), labeled, 0)
    kept = _kept_unlabeled(tiny, labeled)
    whole = research.model_space(kept, rnd)
    calls = []
    features = rnd.model.gradient_features
    monkeypatch.setattr(
        rnd.model, "gradient_features", lambda x: calls.append(len(x)) or features(x)
    )
    monkeypatch.setattr(research, "MAX_FEATURE_FLOATS", 5 * rnd.model.n_params)
    blocked = research.model_space(kept, rnd)
    assert max(calls) == 5 and len(calls) > 4
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_sld_density_weighs_sld_by_how_representative_a_row_is():
    """rbf_density (sld-density's weight): rows inside a dense cluster score near 1, a far outlier
    near 0, and with every row as an anchor it is the plain mean RBF similarity at the median
    squared distance."""
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 0.1, size=(60, 2)), rng.normal(0, 1.0, size=(39, 2)), [[9.0, 9.0]]]
    dens = research.rbf_density(z, np.random.default_rng(1), anchors=len(z))
    d2 = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    np.testing.assert_allclose(dens, np.mean(np.exp(-d2 / (2 * np.median(d2))), axis=1), rtol=1e-6)
    assert dens[-1] < 0.05 < dens[:60].min() and np.argmin(dens) == len(z) - 1
    assert dens[:60].mean() > dens[60:99].mean()


def test_igs_picks_the_row_farthest_in_inputs_times_outputs_from_every_labeled_or_chosen_row(tiny):
    """iGS, spelled out: each pick maximizes min over labeled (x_m, y_m) and already chosen (x_c,
    F(x_c)) rows of
    ||z − z_m|| · |F(x) − y_m|, with z the standardized inputs."""
    _, idx, rnd = _fitted(tiny)
    rest = np.setdiff1d(np.arange(len(tiny.x_pool)), idx)
    x = tiny.x_pool[rest].astype(np.float32)
    kept = strategies.stream.Kept(np.zeros(len(rest)), tiny.ids[rest], x)
    z, pred = rnd.z(x), rnd.model.predict(x)
    refs = [
        (zm, ym)
        for zm, ym in zip(rnd.z(np.asarray(rnd.labeled_x, np.float32)), np.ravel(rnd.labeled_y))
    ]
    want = []
    for _ in range(5):
        score = [
            -np.inf
            if i in want
            else min(np.linalg.norm(z[i] - zm) * abs(pred[i] - ym) for zm, ym in refs)
            for i in range(len(x))
        ]
        j = int(np.argmax(score))
        want.append(j)
        refs.append((z[j], pred[j]))
    assert list(research.igs_pick(kept, rnd, 5).idx) == want
