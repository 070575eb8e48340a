"""`alloop query NAME --shard i/N` for every i, then `alloop merge-queries NAME`, chooses exactly what one
`alloop query NAME` chooses (same ids, order, scores: the same file and state); shards commit nothing;
incomplete, duplicated, mixed or stale shards are refused with one clear line."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import FAST, assert_user_error, digest, invoke

from alloop import strategies


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


def state_of(run):
    return json.loads((run / "state.json").read_text())


def shard_all(name, runs, n, *opts):
    for i in range(n):
        ok(invoke(["query", name, "--shard", f"{i}/{n}", *opts], runs), f"shard {i}/{n}")


def assert_same_round(one, merged):
    """The same query file (ids, order, scores, features, byte for byte) and the same committed state."""
    a, b = state_of(one), state_of(merged)
    assert a["queries"][-1]["file"] == b["queries"][-1]["file"]
    assert (one / a["queries"][-1]["file"]).read_bytes() == (merged / b["queries"][-1]["file"]).read_bytes()
    assert {k: v for k, v in a.items() if k != "queries"} == {k: v for k, v in b.items() if k != "queries"}


@pytest.mark.parametrize("strategy,n", [
    ("sld", 1), ("sld", 3), ("sld", 7), ("random", 4), ("greedy", 3),
    pytest.param("sld-topk", 3, marks=pytest.mark.skipif("sld-topk" not in strategies.REGISTRY, reason="no sld-topk strategy")),
])
def test_shards_then_merge_equal_one_query(run, runs, strategy, n):
    """The prepared run has labels and outstanding rows, so both are left out on every shard."""
    twin = runs / "twin"
    shutil.copytree(run, twin)
    one = ok(invoke(["query", "r", "-k", "6", "--strategy", strategy, "--json"], runs)).json()
    before = {p: h for p, h in digest(twin).items()}
    shard_all("twin", runs, n, "-k", "6", "--strategy", strategy)
    assert {p: h for p, h in digest(twin).items() if not p.startswith("shards/")} == before  # shards commit nothing
    merged = ok(invoke(["merge-queries", "twin", "--json"], runs)).json()
    assert (merged["round"], merged["rows"], merged["strategy"], merged["shards"]) == (one["round"], 6, one["strategy"], n)
    assert_same_round(run, twin)
    assert not list((twin / "shards").glob("*.parquet"))  # spent shards are removed


def test_cold_start_shards_fall_back_to_greedy_like_one_query(alloop_data, runs):
    d = alloop_data
    ok(invoke(["init", "cold", "--pool", d.pool, *FAST], runs))
    shutil.copytree(runs / "cold", runs / "cold2")
    one = ok(invoke(["query", "cold", "-k", "5", "--json"], runs)).json()
    shard_all("cold2", runs, 3, "-k", "5")
    merged = ok(invoke(["merge-queries", "cold2", "--json"], runs)).json()
    assert merged["strategy"] == one["strategy"] == "greedy" and merged["note"] == one["note"]
    assert_same_round(runs / "cold", runs / "cold2")


def test_parquet_format(run, runs):
    twin = runs / "twin"
    shutil.copytree(run, twin)
    ok(invoke(["query", "r", "-k", "4", "--format", "parquet"], runs))
    shard_all("twin", runs, 5, "-k", "4")
    ok(invoke(["merge-queries", "twin", "--format", "parquet"], runs))
    assert_same_round(run, twin)


def test_an_empty_slice_writes_an_empty_shard(run, runs):
    """More shards than pool rows: some slices are empty, and their files still say so."""
    from alloop.commands import shards

    res = ok(invoke(["query", "r", "--shard", "0/1000", "--json"], runs)).json()
    assert (res["rows_scored"], res["rows"]) == (0, 0)
    from alloop.io import rundir

    _, meta, table = shards._read_shard(rundir.open_run(str(run)), run / "shards" / "round-0002-shard-0-of-1000.parquet")
    assert table.num_rows == 0 and (meta["shard"], meta["of"], meta["rows"]) == (0, 1000, [0, 0])


# --- refusals --------------------------------------------------------------------------------------


def test_merge_refuses_missing_shards(run, runs):
    assert_user_error(invoke(["merge-queries", "r"], runs), "no query shards", "--shard i/N")
    ok(invoke(["query", "r", "--shard", "0/3"], runs))
    ok(invoke(["query", "r", "--shard", "2/3"], runs))
    before = digest(run)
    assert_user_error(invoke(["merge-queries", "r"], runs), "missing shard 1/3", "--shard 1/3")
    assert digest(run) == before


def test_merge_refuses_duplicated_and_mixed_shards(run, runs):
    shard_all("r", runs, 2)
    folder = run / "shards"
    shutil.copy(folder / "round-0002-shard-0-of-2.parquet", folder / "round-0002-shard-0-of-2-copy.parquet")
    assert_user_error(invoke(["merge-queries", "r"], runs), "shard 0/2 appears twice")
    (folder / "round-0002-shard-0-of-2-copy.parquet").unlink()
    ok(invoke(["query", "r", "--shard", "1/3"], runs))
    assert_user_error(invoke(["merge-queries", "r"], runs), "split the pool differently")


def test_merge_refuses_shards_of_another_model_or_strategy(run, runs):
    shard_all("r", runs, 2)
    ok(invoke(["query", "r", "--shard", "1/2", "--strategy", "random"], runs))  # replaces shard 1/2
    assert_user_error(invoke(["merge-queries", "r"], runs), "differ in --strategy", "'sld' and 'random'")
    shard_all("r", runs, 2)
    ok(invoke(["train", "r", "--fresh", "--epochs", "1"], runs))  # a new checkpoint: the shards are stale
    before = digest(run)
    assert_user_error(invoke(["merge-queries", "r"], runs), "scored with another model", "run that shard again")
    assert digest(run) == before


def test_merge_refuses_shards_after_the_run_changed(run, runs, alloop_data):
    shard_all("r", runs, 2)
    state = state_of(run)
    outstanding = sorted(state["outstanding"])
    # label one outstanding row without retraining: same checkpoint, different labels and outstanding rows
    (run.parent / "one.csv").write_text(f"id,target\n{outstanding[0]},{alloop_data.truth.loc[int(outstanding[0])]}\n")
    ok(invoke(["ingest", "r", str(run.parent / "one.csv"), "--no-train"], runs))
    assert_user_error(invoke(["merge-queries", "r"], runs), "changed", "run that shard again")


def test_shard_refuses_a_stale_model_and_bad_specs(run, runs, alloop_data):
    for spec in ("3/3", "-1/2", "1", "a/b", "0/0"):
        assert_user_error(invoke(["query", "r", "--shard", spec], runs), "--shard takes i/N")
    outstanding = sorted(state_of(run)["outstanding"])
    (run.parent / "one.csv").write_text(f"id,target\n{outstanding[0]},{alloop_data.truth.loc[int(outstanding[0])]}\n")
    ok(invoke(["ingest", "r", str(run.parent / "one.csv"), "--no-train"], runs))
    assert_user_error(invoke(["query", "r", "--shard", "0/2"], runs), "older than its labels", "alloop train r")
    assert_user_error(invoke(["query", "r", "--devices", "999"], runs), "--devices 999")
