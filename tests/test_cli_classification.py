"""Classification through the command line: the cycle on the bundled wine data with string labels,
the classification strategies, an unknown class refused, and ``--add-class`` growing the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import FAST, assert_user_error, copy_run, digest, invoke

from alloop import strategies
from alloop.io import rundir
from alloop.training import fit as fitting

WINE = Path(__file__).resolve().parents[1] / "datasets" / "wine"
WINE_CLASSES = ["class_0", "class_1", "class_2"]


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


def answer(query_file, truth: pd.Series, out: Path) -> Path:
    """The simulated labeler: the query file with its target column filled in as text."""
    q = pd.read_csv(query_file)
    q["target"] = [str(truth[i]) for i in q["id"]]
    q.to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def wine_truth():
    return pd.read_parquet(WINE / "pool.parquet").set_index("id")["target"]


@pytest.fixture(scope="session")
def wine_run(tmp_path_factory, wine_truth):
    """A wine run (linear softmax) with 2 seed labels per class, trained, with round 1 (6 rows) ingested."""
    runs = tmp_path_factory.mktemp("cls-runs")
    seed = pd.concat([wine_truth[wine_truth == c].iloc[:2] for c in WINE_CLASSES]).reset_index()
    seed.to_csv(runs / "seed.csv", index=False)
    init = ok(
        invoke(
            [
                "init",
                "wine",
                "--task",
                "classification",
                "--pool",
                WINE / "pool.parquet",
                "--test",
                WINE / "test.parquet",
                "--labels",
                runs / "seed.csv",
                *FAST,
                "--json",
            ],
            runs,
        ),
        "init",
    ).json()
    assert init["labels"] == 6
    q = ok(invoke(["query", "wine", "-k", "6", "--json"], runs), "query").json()
    assert q["strategy"] == "margin" and q["rows"] == 6  # classification's default
    filled = answer(q["path"], wine_truth, runs / "answers-1.csv")
    ing = ok(invoke(["ingest", "wine", filled, "--json"], runs), "ingest").json()
    return runs / "wine", q, ing


def test_cycle_on_wine_speaks_the_users_labels(wine_run, runs):
    run_path, q, ing = wine_run
    config = json.loads((run_path / "config.json").read_text())
    assert config["task"] == "classification" and config["classes"] == WINE_CLASSES
    query_file = pd.read_csv(q["path"])
    assert (
        query_file["target"].isna().all() and len(query_file) == 6
    )  # blank for the labeler, no class indices
    labels = pd.read_parquet(
        run_path / json.loads((run_path / "state.json").read_text())["labels_file"]
    )
    assert (
        set(labels["target"]) <= set(WINE_CLASSES) and len(labels) == 12
    )  # stored as the user's strings
    trained = ing["trained"]
    assert trained["labels"] == 12 and trained["residual"] < 0.05
    assert (
        trained["test_accuracy"] >= 0.8
        and trained["test_macro_f1"] >= 0.75
        and trained["test_log_loss"] < 0.8
    )
    assert "test_rmse" not in trained
    copy_run(run_path, runs, "w")
    st = ok(invoke(["status", "w", "--json"], runs)).json()
    assert st["task"] == "classification" and st["classes"] == WINE_CLASSES and not st["stale"]
    assert st["figures"]["test_accuracy"] == trained["test_accuracy"]
    assert (
        "classes" in ok(invoke(["status", "w"], runs)).stdout
        and "test_accuracy" in ok(invoke(["status", "w"], runs)).stdout
    )
    history = [json.loads(line) for line in (run_path / "history.jsonl").read_text().splitlines()]
    assert [h["command"] for h in history] == ["init", "train", "query", "ingest", "train"]
    assert history[-1]["test_accuracy"] == trained["test_accuracy"]
    assert history[1]["test_log_loss"] > trained["test_log_loss"]  # 6 labels, then 12


def test_committee_of_a_classifier_scores_disagreement(wine_run, runs, monkeypatch):
    """Query by committee on a classification run: mean KL of the members to their consensus (not logit variance)."""
    copy_run(wine_run[0], runs, "w")
    config = rundir.open_run(str(runs / "w")).config
    rng = np.random.default_rng(0)
    members = [
        {
            "w": rng.normal(size=(13, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32),
        }
        for _ in range(3)
    ]
    monkeypatch.setattr(fitting, "bootstrap_members", lambda *a, **k: members)
    rec = ok(invoke(["query", "w", "-k", "5", "--strategy", "committee", "--json"], runs)).json()
    q = pd.read_csv(rec["path"])
    x = q[config["pool"]["features"]].to_numpy(np.float64)
    z = (x - np.array(config["standardizer"]["mean"])) / np.array(config["standardizer"]["std"])
    probs = []
    for m in members:
        logits = z @ m["w"] + m["b"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(e / e.sum(1, keepdims=True))
    mean = np.mean(probs, axis=0)
    kl = np.mean([np.sum(p * np.log(p / mean), axis=1) for p in probs], axis=0)
    np.testing.assert_allclose(q["score"], kl, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "strategy",
    ["sld", "sld-topk", "entropy", "margin", "least-confident", "committee", "random", "greedy"],
)
def test_classification_strategies_pick_new_rows(wine_run, runs, strategy, monkeypatch):
    run = copy_run(wine_run[0], runs, "w")
    monkeypatch.setattr(
        strategies.builtin, "COMMITTEE_SIZE", 2
    )  # two bootstrap models are a committee too, and train in half the time
    rec = ok(invoke(["query", "w", "-k", "4", "--strategy", strategy, "--json"], runs)).json()
    assert (rec["strategy"], rec["rows"]) == (strategy, 4)
    picked = pd.read_csv(rec["path"])
    labeled = set(
        pd.read_parquet(run / json.loads((run / "state.json").read_text())["labels_file"])["id"]
    )
    assert not set(picked["id"]) & labeled and picked["id"].is_unique
    if strategy not in ("random", "greedy"):
        assert np.all(np.diff(picked["score"]) <= 1e-9), "rows are not in score order"
        top = picked["score"].iloc[0]
        assert (
            -1 < top <= 0 if strategy == "margin" else top > 0
        )  # margin scores minus the gap between the top two


def test_strategies_of_the_other_task_are_refused(runs, alloop_data):
    """Regression run + classification strategy, and the message names the strategies that do apply."""
    ok(invoke(["init", "r", "--pool", alloop_data.pool, "--labels", alloop_data.seed, *FAST], runs))
    run = runs / "r"
    before = digest(run)
    assert_user_error(
        invoke(["query", "r", "--strategy", "entropy"], runs),
        "--strategy entropy is for classification runs",
        "choose one of sld",
        "committee, greedy",
    )
    assert digest(run) == before
    assert_user_error(
        invoke(["query", "r", "--strategy", "nope"], runs), "unknown --strategy 'nope'"
    )


def test_unknown_class_is_refused_and_changes_nothing(wine_run, runs, wine_truth):
    run = copy_run(wine_run[0], runs, "w")
    q = ok(invoke(["query", "w", "-k", "3", "--json"], runs)).json()
    filled = answer(q["path"], wine_truth, runs / "a.csv")
    df = pd.read_csv(filled)
    df.loc[1, "target"] = "class_9"
    df.to_csv(filled, index=False)
    before = digest(run)
    assert_user_error(
        invoke(["ingest", "w", filled], runs),
        "label 'class_9' is not a known class",
        "class_0, class_1, class_2",
        f"at id {df.loc[1, 'id']}:",  # the row to fix (#32)
        "--add-class",
    )
    assert digest(run) == before


# --- --add-class, with integer labels ----------------------------------------------------------


def _blobs(folder: Path):
    """Three well separated 2-D blobs with integer labels 0, 1, 2; the test set holds only 0 and 1."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = np.repeat([0, 1, 2], 40)
    x = centers[y] + 0.6 * rng.normal(size=(len(y), 2))
    pool = pd.DataFrame({"id": np.arange(len(y)), "x0": x[:, 0], "x1": x[:, 1], "target": y})
    pool.to_parquet(folder / "pool.parquet", index=False)
    yt = np.repeat([0, 1], 10)
    xt = centers[yt] + 0.6 * rng.normal(size=(len(yt), 2))
    pd.DataFrame({"x0": xt[:, 0], "x1": xt[:, 1], "target": yt}).to_parquet(
        folder / "test.parquet", index=False
    )
    pool.drop(columns="id").iloc[::10].to_parquet(
        folder / "test3.parquet", index=False
    )  # all three classes
    pool[pool["target"] < 2].groupby("target").head(3)[["id", "target"]].to_csv(
        folder / "seed.csv", index=False
    )
    pool[pool["target"] == 2].head(3)[["id", "target"]].assign(target=["2", "2.0", 2]).to_csv(
        folder / "new.csv", index=False
    )
    return pool


def _checkpoint(run_path: Path):
    run = rundir.open_run(str(run_path))
    return rundir.load_checkpoint(run, fitting.checkpoint_like(run.config))


def test_add_class_grows_the_model_and_keeps_its_weights(runs, tmp_path):
    pool = _blobs(tmp_path)
    ok(
        invoke(
            [
                "init",
                "b",
                "--task",
                "classification",
                "--pool",
                tmp_path / "pool.parquet",
                "--test",
                tmp_path / "test.parquet",
                "--labels",
                tmp_path / "seed.csv",
                *FAST,
            ],
            runs,
        ),
        "init",
    )
    ok(invoke(["train", "b"], runs), "train")
    run = runs / "b"
    assert json.loads((run / "config.json").read_text())["classes"] == ["0", "1"]
    old, _ = _checkpoint(run)
    assert old["params"]["w"].shape == (2, 2)

    before = digest(run)
    args = ["ingest", "b", tmp_path / "new.csv", "--allow-unqueried"]
    assert_user_error(invoke(args, runs), "label '2' is not a known class (0, 1)", "--add-class")
    assert digest(run) == before

    res = ok(invoke([*args, "--add-class", "--no-train", "--json"], runs), "add-class").json()
    assert res["added"] == 3 and res["classes_added"] == ["2"]
    assert any("added class '2'" in n for n in res["notes"])
    st = ok(invoke(["status", "b", "--json"], runs)).json()
    assert st["classes"] == ["0", "1", "2"] and st["stale"]
    grown, meta = _checkpoint(run)
    for part in ("params", "tangent"):
        assert grown[part]["w"].shape == (2, 3) and grown[part]["b"].shape == (3,)
        np.testing.assert_array_equal(
            grown[part]["w"][:, :2], old[part]["w"]
        )  # trained weights kept exactly
        np.testing.assert_array_equal(grown[part]["b"][:2], old[part]["b"])
        assert not grown[part]["w"][:, 2].any() and grown[part]["b"][2] == 0.0
    assert meta["classes"] == ["0", "1", "2"]

    trained = ok(invoke(["train", "b", "--json"], runs)).json()
    assert trained["labels"] == 9 and trained["test_accuracy"] == 1.0
    final, _ = _checkpoint(run)
    x2 = pool.loc[pool["target"] == 2, ["x0", "x1"]].to_numpy(np.float32)
    config = rundir.open_run(str(run)).config
    assert (
        fitting.predict(config, final["params"], x2).argmax(1) == 2
    ).mean() > 0.9  # the new class is learned
    ok(invoke(["query", "b", "-k", "3", "--strategy", "entropy"], runs), "query after add-class")
    assert ok(invoke(["verify", "b", "--json"], runs)).json()["ok"]


def test_init_class_options(runs, tmp_path):
    _blobs(tmp_path)
    common = ["--pool", tmp_path / "pool.parquet", "--labels", tmp_path / "seed.csv", *FAST]
    assert_user_error(
        invoke(["init", "a", "--task", "classification", "--classes", "0,2", *common], runs),
        "class '1', which --classes does not list",
    )
    assert_user_error(
        invoke(["init", "a", "--classes", "0,1", *common], runs),
        "--classes only applies to --task classification",
    )
    assert not (runs / "a").exists()
    ok(invoke(["init", "a", "--task", "classification", "--classes", "1,0,2", *common], runs))
    assert json.loads((runs / "a" / "config.json").read_text())["classes"] == [
        "1",
        "0",
        "2",
    ]  # the order given
    ok(
        invoke(
            [
                "init",
                "t",
                "--task",
                "classification",
                "--test",
                tmp_path / "test3.parquet",
                *common,
            ],
            runs,
        )
    )
    assert json.loads((runs / "t" / "config.json").read_text())["classes"] == [
        "0",
        "1",
        "2",
    ]  # the test set's class 2 too


def test_demo_on_a_classification_dataset(runs, monkeypatch, tmp_path):
    """`alloop demo` on wine: init takes the dataset's classes, the labeler answers with strings.

    The test split here lacks class_2 and the two random seed labels are both class_0, so only the
    dataset's own class list can tell init that class_2 exists.
    """
    (tmp_path / "wine").mkdir()
    for f in ("pool.parquet", "meta.json"):
        (tmp_path / "wine" / f).write_bytes((WINE / f).read_bytes())
    test = pd.read_parquet(WINE / "test.parquet")
    test[test["target"] != "class_2"].to_parquet(tmp_path / "wine" / "test.parquet", index=False)
    monkeypatch.setenv("ALLOOP_DATASETS", str(tmp_path))
    monkeypatch.setattr(fitting, "MIN_STEPS", 150)  # the demo's trainings, shortened
    res = ok(
        invoke(
            ["demo", "--dataset", "wine", "--rounds", "1", "-k", "5", "--initial", "2", "--json"],
            runs,
        )
    ).json()
    rounds = res["rounds"]
    assert [r["labels"] for r in rounds] == [2, 7]
    assert all(
        0 <= r["test_accuracy"] <= 1 and r["test_log_loss"] > 0 and 0 <= r["test_macro_f1"] <= 1
        for r in rounds
    )
    run = rundir.open_run(res["run"])
    assert run.config["classes"] == WINE_CLASSES
    assert "class_2" in set(
        rundir.read_labels(run)["target"]
    )  # the labeler's strings; init from the seeds alone would refuse it
