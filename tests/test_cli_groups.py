"""``init --group-col``: a grouped run's cycle through the CLI and the Python API; its bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_helpers import FAST, assert_user_error, digest, fill, invoke

import alloop

GROUPS = (3, 13, 23, 33)


def grouped_pool(folder, n=160, null_at=None, group_dtype=np.int64):
    """pool.parquet with a ``store`` column (4 stores; offsets and slopes differ by store)."""
    rng = np.random.default_rng(0)
    store = np.asarray(GROUPS)[rng.integers(0, len(GROUPS), n)]
    x = rng.normal(size=(n, 2))
    dev = {g: rng.normal(size=2) for g in GROUPS}
    y = x @ [1.5, -1.0] + np.array([x[i] @ dev[g] + g / 10 for i, g in enumerate(store)])
    pool = pd.DataFrame({"id": np.arange(n), "x0": x[:, 0], "x1": x[:, 1], "target": y})
    pool["store"] = pd.array(store.astype(group_dtype))
    if null_at is not None:
        pool["store"] = pool["store"].astype("Int64")
        pool.loc[null_at, "store"] = pd.NA
    folder.mkdir(parents=True, exist_ok=True)
    pool.to_parquet(folder / "pool.parquet", index=False)
    pool[["id", "target"]].iloc[:6].to_csv(folder / "seed.csv", index=False)
    return folder / "pool.parquet", folder / "seed.csv", pool.set_index("id")["target"]


def test_grouped_cycle_through_the_cli(runs, tmp_path):
    pool, seed, truth = grouped_pool(tmp_path / "data")
    args = ["init", "shop", "--pool", pool, "--labels", seed, "--group-col", "store", "--s", "1"]
    assert invoke([*args, *FAST], runs).code == 0
    config = json.loads((runs / "shop" / "config.json").read_text())
    assert config["pool"]["features"][-1] == "store"
    assert config["model"]["groups"] == {"column": "store", "values": list(GROUPS)}
    assert invoke(["train", "shop"], runs).code == 0
    q = invoke(["query", "shop", "-k", "4", "--strategy", "sld", "--json"], runs)
    assert q.code == 0, q.stderr
    rows = pd.read_csv(q.json()["path"])
    assert set(rows["store"]) <= set(GROUPS)  # the query file carries each row's group
    assert invoke(["ingest", "shop", fill(q.json()["path"], truth)], runs).code == 0
    st = invoke(["status", "shop", "--json"], runs).json()
    table = {g["group"]: g for g in st["groups"]}
    assert set(table) == set(GROUPS) and sum(g["labels"] for g in table.values()) == 10
    for g in table.values():
        assert g["c"] > 0 and np.isfinite(g["dc_ds"])
    text = invoke(["status", "shop"], runs).stdout
    assert "dc/ds" in text and "groups (4" in text


def test_an_unlabeled_group_sits_at_the_prior_after_training(runs, tmp_path):
    pool, seed, _ = grouped_pool(tmp_path / "data")
    labels = pd.read_parquet(pool)
    labels = labels[labels["store"] != 33][["id", "target"]].iloc[:8]
    labels.to_csv(tmp_path / "seed8.csv", index=False)
    api_run = alloop.init_run(
        "api", str(pool), labels=str(tmp_path / "seed8.csv"), group_col="store", s=2.0,
        train={"epochs": 1, "min_steps": 150, "lr": 0.05},
    )  # fmt: skip
    api_run.train()
    table = {g["group"]: g for g in api_run.status()["groups"]}
    m = 3  # an offset and two slopes per group
    assert table[33]["labels"] == 0
    assert table[33]["c"] == pytest.approx(np.sqrt(m / (4 * 2.0)), rel=1e-5)
    assert table[33]["dc_ds"] == pytest.approx(-table[33]["c"] / (2 * 2.0), rel=1e-5)
    assert len(api_run.query(k=3, strategy="sld").rows) == 3


@pytest.mark.parametrize(
    "extra, make, needles",
    [
        (["--group-col", "shop"], {}, ("'shop' is not a column of the pool",)),
        (["--group-col", "store"], {"null_at": 7}, ("no group in column 'store' for id 7",)),
        (["--group-col", "store", "--max-groups", "3"], {}, ("more than 3 groups",)),
        (["--group-col", "store"], {"group_dtype": np.float64}, ("not integers",)),
        (["--group-col", "store", "--model", "auto"], {}, ("not auto",)),
        (["--group-col", "store", "--task", "classification"], {}, ("regression",)),
    ],
)
def test_bad_group_input_is_one_line_and_no_run(runs, tmp_path, extra, make, needles):
    pool, seed, _ = grouped_pool(tmp_path / "data", **make)
    res = invoke(["init", "bad", "--pool", pool, "--labels", seed, *extra], runs)
    assert_user_error(res, *needles)
    assert not (runs / "bad").exists()


def test_bad_group_input_leaves_an_existing_run_unchanged(runs, tmp_path):
    """A second init over an existing grouped run is refused without touching its files."""
    pool, seed, _ = grouped_pool(tmp_path / "data")
    assert invoke(["init", "shop", "--pool", pool, "--group-col", "store", *FAST], runs).code == 0
    before = digest(runs / "shop")
    res = invoke(["init", "shop", "--pool", pool, "--group-col", "nope"], runs)
    assert res.code == 2 and digest(runs / "shop") == before


def test_simulate_replays_the_grouped_model(runs, tmp_path):
    pool, _, truth = grouped_pool(tmp_path / "data")
    test = pd.read_parquet(pool).drop(columns="id").iloc[:40]
    test.to_parquet(tmp_path / "test.parquet", index=False)
    args = ["simulate", "--pool", pool, "--test", tmp_path / "test.parquet", "--group-col", "store"]
    short = ["--strategies", "sld", "--reps", "1", "--budget", "20", "--initial", "10", "--s", "1"]
    res = invoke([*args, *short, "--jobs", "1", "--out", tmp_path / "sim"], runs)
    assert res.code == 0, res.stderr
    curves = pd.read_csv(tmp_path / "sim" / "curves.csv")
    assert list(curves["n_labels"]) == [10, 20] and np.all(np.isfinite(curves["metric"]))
    config = json.loads((tmp_path / "sim" / "config.json").read_text())
    assert config["settings"]["group_col"] == "store"
    bad = invoke([*args[:-1], "x9", *short, "--jobs", "1", "--out", tmp_path / "bad"], runs)
    assert_user_error(bad, "'x9' is not a numeric column")


def test_simulation_settings_without_groups_store_as_before():
    """Simulations made before --group-col resume: their stored settings gain no key."""
    from alloop.sim.settings import SimSettings

    assert "group_col" not in SimSettings().to_dict()
    assert SimSettings(group_col="store").to_dict()["group_col"] == "store"
