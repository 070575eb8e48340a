"""The use cases of alloop/commands called directly: what they return, store and report, and that a
refused call commits nothing (no CLI here; see test_cli_*.py for the command line)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from cli_helpers import FEATURES, digest, fill

from alloop.commands import common
from alloop.commands.common import history
from alloop.commands.ingest import ingest as ingest_cmd
from alloop.commands.init import init_run
from alloop.commands.query import query as query_cmd
from alloop.commands.status import needs_training
from alloop.commands.status import status as status_cmd
from alloop.commands.train import train as train_cmd
from alloop.errors import UserError
from alloop.io import rundir
from alloop.reporting import Recorder

FAST = {"epochs": 1, "min_steps": 150, "lr": 0.05}


def test_init_stores_the_configuration_as_given(runs, alloop_data):
    res = init_run(
        "a",
        str(alloop_data.pool),
        labels=str(alloop_data.seed),
        test=str(alloop_data.test),
        train=FAST,
        s=0.5,
    )
    run = runs / "a"
    assert res == {"run": str(run), "pool_rows": 240, "features": list(FEATURES), "labels": 3}
    config = json.loads((run / "config.json").read_text())
    assert (
        config["s"] == 0.5 and config["train"]["min_steps"] == 150 and config["train"]["lr"] == 0.05
    )
    assert config["pool"]["path"] == str(alloop_data.pool)
    assert (
        run / config["pool"]["from_run"]
    ).resolve() == alloop_data.pool  # relative to the run, for copies
    assert config["test"]["rows"] == 80 and config["pool"]["targets_in_pool"] == ["target"]
    assert len(config["standardizer"]["mean"]) == 3
    state = json.loads((run / "state.json").read_text())
    assert state["n_labels"] == 3 and state["checkpoint"] is None and state["round"] == 0


def test_min_steps_sets_the_training_length(runs, alloop_data):
    init_run(
        "a",
        str(alloop_data.pool),
        labels=str(alloop_data.seed),
        train={"epochs": 1, "min_steps": 40},
    )
    assert train_cmd("a")["epochs"] == 40  # 3 labels: one step per epoch


def test_status_of_a_new_run(runs, alloop_data):
    init_run("a", str(alloop_data.pool), train=FAST)
    st = status_cmd("a")
    assert (st["labels"], st["outstanding"], st["round"], st["trained_on"], st["stale"]) == (
        0,
        0,
        0,
        None,
        False,
    )
    assert st["figures"] == {} and st["warnings"] == [] and st["queries"] == []


def test_cold_start_note_goes_to_the_reporter(runs, alloop_data):
    init_run("a", str(alloop_data.pool), train=FAST)
    rec = Recorder()
    out = query_cmd("a", k=4, strategy="sld", reporter=rec)
    assert out["strategy"] == "greedy" and out["requested"] == "sld"
    assert (
        len(rec.infos) == 1
        and rec.infos[0].startswith("cold start")
        and rec.infos[0] == out["note"]
    )


def test_greedy_spreads_its_picks(runs, alloop_data):
    """GSx picks are far apart: farther, on average, than random picks (same pool, same k)."""
    init_run("a", str(alloop_data.pool), train=FAST)
    init_run("b", str(alloop_data.pool), train=FAST)
    pool = pd.read_parquet(alloop_data.pool).set_index("id")[list(FEATURES)]

    def spread(path):
        x = pool.loc[pd.read_csv(path)["id"]].to_numpy()
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d[np.triu_indices(len(x), 1)].min()

    greedy = query_cmd("a", k=8, strategy="greedy")["path"]
    random = query_cmd("b", k=8, strategy="random")["path"]
    assert spread(greedy) > spread(random)


def test_query_refuses_when_nothing_is_left(runs, tmp_path, alloop_data):
    small = tmp_path / "small.parquet"
    pd.read_parquet(alloop_data.pool).iloc[:6].to_parquet(small, index=False)
    init_run("a", str(small), train=FAST)
    before = digest(runs / "a")
    with pytest.raises(UserError, match="-k 10 is more than the 6 pool rows left"):
        query_cmd("a", k=10)  # refused, not all 6 made outstanding at once (#32)
    assert digest(runs / "a") == before
    assert query_cmd("a", k=6)["rows"] == 6
    before = digest(runs / "a")
    with pytest.raises(UserError, match="every pool row of run 'a' is labeled or outstanding"):
        query_cmd("a", k=1)
    assert digest(runs / "a") == before


def test_blank_answers_commit_nothing(run, alloop_data):
    """A returned file with every target blank: nothing added, nothing written, not even history."""
    out = json.loads((run / "state.json").read_text())["outstanding"]
    blank = run.parent.parent / "blank.csv"
    blank.write_text("id,target\n" + "".join(f"{i},\n" for i in out))
    before = digest(run)
    rec = Recorder()
    res = ingest_cmd("r", str(blank), reporter=rec)
    assert (res["added"], res["outstanding"]) == (0, 2) and "trained" not in res
    assert any("2 ids left blank stay outstanding" in n for n in rec.infos)
    assert digest(run) == before


def test_ingest_then_train_records_history(run, alloop_data):
    q = query_cmd("r", k=3)
    res = ingest_cmd("r", str(fill(q["path"], alloop_data.truth)), no_train=True)
    assert "trained" not in res and status_cmd("r")["stale"]
    assert needs_training(rundir.open_run("r"))
    trained = train_cmd("r")
    assert trained["labels"] == res["labels"] and not status_cmd("r")["stale"]
    done = [h["command"] for h in history("r")]
    assert done[-3:] == ["query", "ingest", "train"]


def test_queries_record_their_uniform_draws_and_the_next_round_sees_them(run, alloop_data):
    """A mixed batch's uniform share and a random query's rows are kept as uniform draws in the state; once
    labeled, the round a strategy sees flags exactly those rows (what sld-mix-auto chooses its share from)."""
    from alloop.commands import query as query_mod

    mixed = query_cmd("r", k=6, strategy="sld-mix-auto", fmt="parquet")
    picks = pd.read_parquet(mixed["path"])
    drawn = (
        picks["id"][picks["score"].isna()].astype(str).tolist()
    )  # the uniform share has no score
    assert len(drawn) == 3  # no uniform labels yet: the prior share, half of 6
    assert rundir.open_run("r").state["uniform"] == drawn
    ingest_cmd("r", str(fill(mixed["path"], alloop_data.truth)))
    rand = query_cmd("r", k=4, strategy="random", fmt="parquet")
    drawn += pd.read_parquet(rand["path"])["id"].astype(str).tolist()
    ingest_cmd("r", str(fill(rand["path"], alloop_data.truth)))
    run_ = rundir.open_run("r")
    assert run_.state["uniform"] == drawn
    info = common.open_pool_of(run_)
    rnd = query_mod.round_of(run_, info, 0)
    ids = rundir.read_labels(run_)["id"].astype(str).tolist()
    assert (
        rnd.labeled_uniform.tolist() == [i in drawn for i in ids] and rnd.labeled_uniform.sum() == 7
    )
    before = digest(run)
    query_cmd("r", k=5, strategy="herding")
    assert rundir.open_run("r").state["uniform"] == drawn  # a batch with no uniform draw adds none
    assert digest(run) != before


def test_a_refused_ingest_commits_nothing(run, tmp_path):
    """Validation happens before the first write: labels, state, history and checkpoints stay as they were."""
    f = tmp_path / "bad.csv"
    outstanding = list(json.loads((run / "state.json").read_text())["outstanding"])
    f.write_text(f"id,target\n{outstanding[0]},1.0\n{outstanding[1]},oops\n")
    before = digest(run)
    with pytest.raises(UserError, match="non-numeric value 'oops'"):
        ingest_cmd("r", str(f))
    assert digest(run) == before


def test_copied_run_uses_the_pool_beside_it(runs, tmp_path, alloop_data):
    """config.pool.from_run is relative to the run, so a project copied whole (pool + runs/) still works."""
    project = tmp_path / "p"
    (project / "data").mkdir(parents=True)
    (project / "data" / "pool.parquet").write_bytes(alloop_data.pool.read_bytes())
    init_run(
        str(project / "runs" / "x"),
        str(project / "data" / "pool.parquet"),
        labels=str(alloop_data.seed),
        train=FAST,
    )
    os.rename(project, tmp_path / "q")
    info = common.open_pool_of(rundir.open_run(str(tmp_path / "q" / "runs" / "x")))
    assert info.path == str(tmp_path / "q" / "data" / "pool.parquet")
