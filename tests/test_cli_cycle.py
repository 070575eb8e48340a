"""The label-query cycle through the command line: the installed command end to end, then each
piece (formats, strategies, cold start, a stale model, a moved run, help) through CliRunner."""

from __future__ import annotations

import inspect
import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from cli_helpers import (
    FAST,
    FEATURES,
    assert_user_error,
    digest,
    fill,
    invoke,
    read_any,
    run_alloop,
)

from alloop.cli import app

STATUS_FIELDS = {
    "run",
    "task",
    "model",
    "pool",
    "pool_rows",
    "features",
    "labels",
    "outstanding",
    "round",
    "s",
    "trained_on",
    "stale",
    "residual",
    "figures",
    "warnings",
    "queries",
}


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    assert "Traceback" not in res.stderr
    return res


def state_of(run):
    return json.loads((run / "state.json").read_text())


def labels_of(run):
    return pd.read_parquet(run / state_of(run)["labels_file"])


def check_query_file(path, run, k, known_ids):
    """A query file: id, rank, score, the features, an empty target; new ids, ranked by score."""
    q = read_any(path)
    assert list(q.columns) == ["id", "rank", "score", *FEATURES, "target"]
    assert len(q) == k and q["id"].is_unique and not set(q["id"]) & set(known_ids)
    assert q["rank"].tolist() == list(range(1, k + 1))
    assert np.all(np.diff(q["score"].to_numpy()) <= 1e-12), "rows are not in score order"
    assert q["target"].isna().all()
    return q


# --- end to end, the installed command ---------------------------------------------------------


def test_full_cycle_with_the_installed_command(tmp_path, alloop_data):
    """init -> query -> ingest -> train -> query -> ingest, then status and verify, in subprocesses."""
    d, runs = alloop_data, tmp_path / "runs"
    sh = lambda *args: ok(run_alloop(list(args), tmp_path, runs), args[0])  # noqa: E731
    shutil.copy(d.pool, tmp_path / "pool.parquet")

    init = sh(
        "init",
        "exp",
        "--pool",
        "pool.parquet",
        "--test",
        d.test,
        "--labels",
        d.seed,
        *FAST,
        "--json",
    ).json()
    run = runs / "exp"
    assert init == {"run": str(run), "pool_rows": 240, "features": list(FEATURES), "labels": 3}
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.json",
        "history.jsonl",
        "labels",
        "queries",
        "state.json",
        "test.parquet",
    ]
    config = json.loads((run / "config.json").read_text())
    assert config["pool"]["features"] == list(FEATURES) and config["train"]["min_steps"] == 150

    q1 = sh("query", "exp", "-k", "6", "--json")  # no model yet: trains first
    assert "training first" in q1.stderr
    rec1 = q1.json()
    assert (
        rec1["round"] == 1
        and rec1["rows"] == 6
        and rec1["strategy"] == "herding"
        and rec1["file"] == "queries/round-0001.csv"
    )
    check_query_file(rec1["path"], run, 6, labels_of(run)["id"])
    assert sorted(state_of(run)["outstanding"]) == sorted(
        str(i) for i in read_any(rec1["path"])["id"]
    )

    ing1 = sh(
        "ingest", "exp", fill(rec1["path"], d.truth, tmp_path / "answers-1.csv"), "--json"
    ).json()
    assert (ing1["added"], ing1["labels"], ing1["outstanding"]) == (6, 9, 0)
    assert ing1["trained"]["labels"] == 9

    train = sh("train", "exp", "--json").json()
    assert train["labels"] == 9 and {"test_rmse", "test_mae", "train_loss", "residual"} <= set(
        train
    )

    rec2 = sh("query", "exp", "-k", "6", "--json").json()
    assert rec2["round"] == 2 and rec2["file"] == "queries/round-0002.csv"
    check_query_file(rec2["path"], run, 6, labels_of(run)["id"])
    ing2 = sh(
        "ingest", "exp", fill(rec2["path"], d.truth, rec2["path"]), "--json"
    ).json()  # filled in place, as the docs say
    assert (ing2["added"], ing2["labels"], ing2["outstanding"]) == (6, 15, 0)

    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["command"] for h in history] == [
        "init",
        "train",
        "query",
        "ingest",
        "train",
        "train",
        "query",
        "ingest",
        "train",
    ]
    first, last = history[1]["test_rmse"], ing2["trained"]["test_rmse"]
    assert last < 0.7 * first, f"test RMSE did not fall: {first} -> {last}"

    state = state_of(run)
    assert state["n_labels"] == 15 and state["labels_at_checkpoint"] == 15 and state["round"] == 2
    assert [q["file"] for q in state["queries"]] == [
        "queries/round-0001.csv",
        "queries/round-0002.csv",
    ]
    labels = labels_of(run)
    assert list(labels.columns) == ["id", "target", "round", "time"] and labels["id"].is_unique
    assert np.allclose(labels["target"], d.truth.loc[labels["id"]].to_numpy())
    assert sorted(labels["round"].unique()) == [0, 1, 2]
    assert (run / state["checkpoint"]).exists()
    assert (
        len(list((run / "checkpoints").glob("ckpt-*.npz"))) <= 2
    )  # the current and the previous one
    assert len(list((run / "labels").glob("labels-*.parquet"))) <= 2

    st = sh("status", "exp", "--json").json()
    assert STATUS_FIELDS <= set(st), STATUS_FIELDS - set(st)
    assert (st["labels"], st["outstanding"], st["round"], st["trained_on"], st["stale"]) == (
        15,
        0,
        2,
        15,
        False,
    )
    assert (st["pool_rows"], st["features"], st["task"], st["model"], st["s"]) == (
        240,
        3,
        "regression",
        "auto",
        "auto",
    )  # init's defaults
    assert (
        st["model_now"] in ("linear", "poly 2", "poly 3") and st["model_choice"]["reason"]
    )  # 15 labels: no MLP yet
    assert st["figures"]["test_rmse"] == pytest.approx(last)
    assert st["queries"] == ["queries/round-0001.csv", "queries/round-0002.csv"]

    v = sh("verify", "exp", "--json").json()
    assert v["ok"] and v["problems"] == []
    assert "is consistent" in sh("verify", "exp").stdout


def test_python_m_alloop_help(tmp_path):
    res = ok(
        run_alloop(
            ["--help"], tmp_path, tmp_path / "runs", command=[sys.executable, "-m", "alloop"]
        )
    )
    for command in ("init", "query", "ingest", "train", "status", "verify"):
        assert command in res.stdout


def test_each_command_help_shows_its_example(runs):
    """Every registered command (also ones added later) has an ``Example:`` in its docstring, shown by --help."""
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"init", "train", "query", "ingest", "status", "verify"} <= set(names)
    for c in app.registered_commands:
        name = c.name or c.callback.__name__
        doc = inspect.getdoc(c.callback) or ""
        assert "Example: alloop " in doc, f"`alloop {name}` has no example in its docstring"
        example = " ".join(doc.split("Example: ", 1)[1].split())
        shown = " ".join(ok(invoke([name, "--help"], runs)).stdout.split())
        assert example in shown, f"`alloop {name} --help` does not show {example!r}"


# --- pieces of the cycle, in-process ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_query_formats_are_ingestable_after_filling(run, runs, alloop_data, fmt):
    before = labels_of(run)
    known = list(before["id"]) + [int(i) for i in state_of(run)["outstanding"]]
    rec = ok(invoke(["query", "r", "-k", "4", "--format", fmt, "--json"], runs)).json()
    assert rec["file"] == f"queries/round-0002.{fmt}"
    q = check_query_file(rec["path"], run, 4, known)
    filled = fill(rec["path"], alloop_data.truth, leave_blank=1)
    res = ok(invoke(["ingest", "r", filled, "--no-train", "--json"], runs)).json()
    assert res["added"] == 3 and res["labels"] == len(before) + 3
    assert str(q["id"].iloc[-1]) in state_of(run)["outstanding"]  # the blank row stays outstanding
    assert "1 ids left blank stay outstanding" in " ".join(res["notes"])


@pytest.mark.parametrize("strategy", ["sld", "random", "committee", "greedy"])
def test_every_strategy_picks_new_rows(run, runs, strategy):
    known = list(labels_of(run)["id"]) + [int(i) for i in state_of(run)["outstanding"]]
    res = ok(invoke(["query", "r", "-k", "3", "--strategy", strategy, "--json"], runs))
    rec = res.json()
    assert (rec["strategy"], rec["requested"], rec["rows"], rec["note"]) == (
        strategy,
        strategy,
        3,
        None,
    )
    check_query_file(rec["path"], run, 3, known)
    assert len(state_of(run)["outstanding"]) == len(known) - len(labels_of(run)) + 3


def test_cold_start_falls_back_to_greedy_and_says_so(runs, alloop_data):
    ok(invoke(["init", "cold", "--pool", alloop_data.pool, *FAST], runs))
    res = ok(invoke(["query", "cold", "-k", "5", "--json", "--strategy", "sld"], runs))
    rec = res.json()
    assert (rec["requested"], rec["strategy"]) == ("sld", "greedy")
    assert "cold start" in res.stderr and "greedy" in res.stderr
    assert "cold start" in rec["note"]
    assert state_of(runs / "cold")["checkpoint"] is None  # nothing to train on yet
    filled = fill(rec["path"], alloop_data.truth)
    assert ok(invoke(["ingest", "cold", filled, "--json"], runs)).json()["trained"]["labels"] == 5
    assert (
        ok(invoke(["query", "cold", "-k", "3", "--json", "--strategy", "sld"], runs)).json()[
            "strategy"
        ]
        == "sld"
    )


def test_the_regression_default_needs_no_model_so_a_cold_start_runs_it(runs, alloop_data):
    """herding (the default) reads only the pool's inputs: with no labels it still runs, with no fallback and no note."""
    ok(invoke(["init", "cold", "--pool", alloop_data.pool, *FAST], runs))
    rec = ok(invoke(["query", "cold", "-k", "5", "--json"], runs)).json()
    assert (rec["requested"], rec["strategy"], rec["note"]) == ("herding", "herding", None)
    assert rec["rows"] == 5


def test_an_mlp_run_queries_with_its_own_default_lcmd_and_a_linear_run_with_herding(
    runs, alloop_data
):
    """The default depends on the model (docs/results.md "The default"): LCMD in the network's gradient space for
    an MLP, kernel herding in the inputs otherwise; before its first training the MLP's default has no model, so greedy runs."""
    ok(
        invoke(
            ["init", "net", "--pool", alloop_data.pool, "--model", "mlp", "--hidden", "8", *FAST],
            runs,
        )
    )
    cold = ok(invoke(["query", "net", "-k", "5", "--json"], runs)).json()
    assert (cold["requested"], cold["strategy"]) == (
        "lcmd",
        "greedy",
    ) and "no trained model" in cold["note"]
    ok(invoke(["ingest", "net", fill(cold["path"], alloop_data.truth)], runs))
    warm = ok(invoke(["query", "net", "-k", "4", "--json"], runs)).json()
    assert (warm["requested"], warm["strategy"], warm["note"]) == ("lcmd", "lcmd", None) and warm[
        "rows"
    ] == 4
    ok(invoke(["init", "lin", "--pool", alloop_data.pool, *FAST], runs))
    assert ok(invoke(["query", "lin", "-k", "3", "--json"], runs)).json()["requested"] == "herding"


def test_query_on_a_stale_model_trains_first(run, runs, alloop_data):
    out = [int(i) for i in state_of(run)["outstanding"]]
    (runs.parent / "late.csv").write_text(
        "id,target\n" + "".join(f"{i},{float(alloop_data.truth[i])!r}\n" for i in out)
    )
    ok(invoke(["ingest", "r", runs.parent / "late.csv", "--no-train"], runs))
    st = ok(invoke(["status", "r", "--json"], runs)).json()
    assert st["stale"] and st["trained_on"] == st["labels"] - 2
    res = ok(invoke(["query", "r", "-k", "2", "--json"], runs))
    assert "older than the labels" in res.stderr and "training first" in res.stderr
    st = ok(invoke(["status", "r", "--json"], runs)).json()
    assert not st["stale"] and st["trained_on"] == st["labels"]
    history = [
        json.loads(line)["command"] for line in (run / "history.jsonl").read_text().splitlines()
    ]
    assert history[-3:] == ["ingest", "train", "query"]


def test_run_copied_elsewhere_keeps_working(tmp_path, monkeypatch, alloop_data):
    """A project folder (pool + runs/) copied, and the original deleted: the pool is found beside the run."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(alloop_data.pool, project / "pool.parquet")
    monkeypatch.chdir(project)
    ok(
        invoke(
            ["init", "exp", "--pool", "pool.parquet", "--labels", alloop_data.seed, *FAST],
            project / "runs",
        )
    )
    moved = tmp_path / "elsewhere"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    monkeypatch.chdir(tmp_path)
    run = moved / "runs" / "exp"
    rec = ok(invoke(["query", str(run), "-k", "3", "--json"], tmp_path / "runs")).json()
    assert rec["path"] == str(run / "queries" / "round-0001.csv")
    assert (
        ok(
            invoke(
                ["ingest", str(run), fill(rec["path"], alloop_data.truth), "--json"],
                tmp_path / "runs",
            )
        ).json()["added"]
        == 3
    )
    assert ok(invoke(["verify", str(run), "--json"], tmp_path / "runs")).json()["ok"]


def test_run_moved_alone_still_finds_its_pool(run, runs, tmp_path):
    """Only the run directory moved: the pool is where init saw it."""
    moved = tmp_path / "archive" / "r"
    shutil.move(str(run), moved)
    assert ok(invoke(["query", str(moved), "-k", "2", "--json"], runs)).json()["rows"] == 2


def test_a_diverged_training_prints_valid_json(runs, alloop_data):
    """NaN figures come out as null (not invalid JSON or a traceback); SLD then falls back to greedy."""
    ok(
        invoke(
            [
                "init",
                "div",
                "--pool",
                alloop_data.pool,
                "--labels",
                alloop_data.seed,
                "--test",
                alloop_data.test,
                "--epochs",
                "1",
                "--min-steps",
                "20",
                "--optimizer",
                "sgd",
                "--lr",
                "1000",
            ],
            runs,
        )
    )
    res = ok(invoke(["train", "div", "--json"], runs))
    rec = json.loads(res.stdout)
    assert rec["train_loss"] is None and rec["test_rmse"] is None and rec["warnings"]
    assert "warning:" in res.stderr
    st = json.loads(ok(invoke(["status", "div", "--json"], runs)).stdout)
    assert st["figures"]["test_rmse"] is None and st["residual"] is None
    q = ok(invoke(["query", "div", "-k", "2", "--json", "--strategy", "sld"], runs)).json()
    assert q["strategy"] == "greedy" and "not finite" in q["note"]


def test_a_refused_command_in_a_real_process_leaves_the_run_alone(run, runs):
    before = digest(run)
    assert_user_error(
        run_alloop(["train", "r", "--epochs", "0"], runs.parent, runs),
        "--epochs must be at least 1",
    )
    assert digest(run) == before


def test_status_reads_the_run_without_starting_jax(run, runs):
    """Looking at a run reads JSON: it must not pay JAX's import (about a second)."""
    import os
    import subprocess

    code = (
        "import sys; from typer.testing import CliRunner; from alloop.cli import app; "
        "r = CliRunner().invoke(app, ['status', 'r', '--json']); assert r.exit_code == 0, r.output; "
        "import json; json.loads(r.stdout); print('jax' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "ALLOOP_RUNS": str(runs)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
