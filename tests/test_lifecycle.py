"""The life of a queried row (#32): asked (outstanding), answered (a label recording the query round
it answers), or handed back to the pool (``alloop withdraw``, ``query --reask-after``, a skipped
Label Studio task: see test_labelstudio.py). A -k above the rows left is refused, so one query
cannot make the whole pool outstanding."""

from __future__ import annotations

import datetime
import json

import pandas as pd
import pytest
from cli_helpers import assert_user_error, digest, fill, invoke

from alloop.io import rundir

POOL_ROWS = 240  # cli_helpers.make_data


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


def state_of(run) -> dict:
    return json.loads((run / "state.json").read_text())


def refused(run, runs, args, *needles) -> str:
    before = digest(run)
    line = assert_user_error(invoke(args, runs), *needles)
    assert digest(run) == before, "a refused command changed the run's files"
    return line


def left_to_ask(run) -> int:
    state = state_of(run)
    return POOL_ROWS - state["n_labels"] - len(state["outstanding"])


# --- -k above the rows left ----------------------------------------------------------------------


def test_k_above_the_rows_left_is_refused_with_the_number_left(run, runs):
    left = left_to_ask(run)
    refused(run, runs, ["query", "r", "-k", "10000"], f"the {left} pool rows left", f"-k {left}")


def test_k_equal_to_the_rows_left_is_asked_then_a_query_says_how_to_go_on(run, runs):
    left = left_to_ask(run)
    ok(invoke(["query", "r", "-k", str(left), "--strategy", "random"], runs))
    assert left_to_ask(run) == 0
    refused(run, runs, ["query", "r", "-k", "1"], "labeled or outstanding", "alloop withdraw r")


# --- withdraw ------------------------------------------------------------------------------------


def test_withdraw_a_round_returns_its_rows_and_keeps_the_query_file(run, runs):
    before = state_of(run)
    asked = {k for k, r in before["outstanding"].items() if r == 1}
    assert asked
    res = ok(invoke(["withdraw", "r", "--round", "1", "--json"], runs)).json()
    after = state_of(run)
    assert res["withdrawn"] == len(asked) and res["rounds"] == [1]
    assert not set(after["outstanding"]) & asked
    assert [q["file"] for q in after["queries"]] == [q["file"] for q in before["queries"]]
    assert all((run / q["file"]).is_file() for q in after["queries"])
    assert after["generation"] == before["generation"] + 1
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert last["command"] == "withdraw" and sorted(map(str, last["ids"])) == sorted(asked)
    assert ok(invoke(["verify", "r", "--json"], runs)).json()["ok"]


def test_withdrawn_rows_can_be_asked_again(run, runs):
    asked = set(state_of(run)["outstanding"])
    ok(invoke(["withdraw", "r", "--all"], runs))
    left = left_to_ask(run)
    q = ok(invoke(["query", "r", "-k", str(left), "--strategy", "random", "--json"], runs)).json()
    again = set(map(str, pd.read_csv(q["path"])["id"]))
    assert asked <= again


def test_withdraw_ids_from_a_file(run, runs, tmp_path):
    one = sorted(state_of(run)["outstanding"])[0]
    (tmp_path / "ids.txt").write_text(f"{one}\n")
    ok(invoke(["withdraw", "r", "--ids", tmp_path / "ids.txt"], runs))
    assert one not in state_of(run)["outstanding"]


def test_withdraw_mistakes_change_nothing(run, runs, tmp_path):
    labeled = pd.read_parquet(run / state_of(run)["labels_file"])["id"].iloc[0]
    (tmp_path / "ids.csv").write_text(f"id\n{labeled}\n")
    refused(run, runs, ["withdraw", "r"], "exactly one of --round N, --ids FILE or --all")
    refused(run, runs, ["withdraw", "r", "--round", "1", "--all"], "exactly one of")
    refused(run, runs, ["withdraw", "r", "--round", "7"], "round 7 has no outstanding rows", "1")
    refused(run, runs, ["withdraw", "r", "--ids", tmp_path / "ids.csv"], f"id {labeled}")
    refused(run, runs, ["withdraw", "r", "--ids", tmp_path / "none.csv"], "not found")


# --- expiry: query --reask-after DAYS -------------------------------------------------------------


def test_reask_after_returns_old_unanswered_rows_before_picking(run, runs):
    asked = set(state_of(run)["outstanding"])
    k = left_to_ask(run) + len(asked)
    refused(run, runs, ["query", "r", "-k", str(k)], "pool rows left")
    res = ok(
        invoke(["query", "r", "-k", str(k), "--strategy", "random", "--reask-after", "0"], runs)
    )
    assert f"{len(asked)} rows outstanding for over 0 days returned" in res.stderr
    state = state_of(run)
    assert asked <= set(state["outstanding"]) and set(state["outstanding"].values()) == {2}


def test_expired_counts_days_from_when_the_round_was_asked(run, runs):
    from alloop.commands import withdraw as withdrawing

    r = rundir.open_run(str(run))
    asked = datetime.datetime.fromisoformat(rundir.asked_times(r)[1].replace("Z", "+00:00"))
    day = datetime.timedelta(days=1)
    assert withdrawing.expired(r, 2, now=asked + day) == []
    assert sorted(withdrawing.expired(r, 2, now=asked + 3 * day)) == sorted(r.outstanding)


def test_asked_times_of_an_old_run_come_from_its_history(run, runs):
    """Runs made before query entries carried a time: the query's history line has it."""
    r = rundir.open_run(str(run))
    times = rundir.asked_times(r)
    for q in r.state["queries"]:
        q.pop("time")
    assert rundir.asked_times(r) == times


def test_reask_after_must_be_days(run, runs):
    refused(run, runs, ["query", "r", "--reask-after", "-1"], "--reask-after is a number of days")


# --- rounds that tell the story ------------------------------------------------------------------


def test_a_label_records_the_query_round_it_answers(run, runs, alloop_data):
    """Round 1's last rows answered after round 2 was asked are labels of round 1, not 2."""
    first = state_of(run)["queries"][0]["file"]
    ok(invoke(["query", "r", "-k", "3"], runs))
    filled = fill(run / first, alloop_data.truth, out=runs / "late.csv")
    res = ok(invoke(["ingest", "r", filled, "--no-train", "--json"], runs)).json()
    assert res["added"] == 2
    labels = pd.read_parquet(run / state_of(run)["labels_file"])
    assert sorted(labels["round"].tolist()) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert labels["time"].notna().all()
    st = ok(invoke(["status", "r", "--json"], runs)).json()
    assert st["labels_by_round"] == {"0": 3, "1": 5}
    assert st["outstanding_by_round"] == {"2": 3}


def test_a_never_queried_label_is_round_0(run, runs, tmp_path):
    state = state_of(run)
    taken = set(state["outstanding"])
    labeled = pd.read_parquet(run / state["labels_file"])["id"].tolist()
    fresh = next(i for i in range(1000, 1240) if str(i) not in taken and i not in labeled)
    (tmp_path / "mine.csv").write_text(f"id,target\n{fresh},1.5\n")
    args = ["ingest", "r", tmp_path / "mine.csv", "--allow-unqueried", "--no-train"]
    ok(invoke(args, runs))
    labels = pd.read_parquet(run / state_of(run)["labels_file"]).set_index("id")
    assert labels.loc[fresh, "round"] == 0


def test_status_shows_labels_by_round_and_s_by_labels(run, runs):
    res = ok(invoke(["status", "r"], runs))
    assert "labels by round" in res.stdout and "0: 3, 1: 3" in res.stdout
    assert "s by labels" in res.stdout and "\n s by round" not in res.stdout


def test_old_label_files_still_read(run, runs):
    """A labels file as earlier versions wrote it (round = the round current at ingest) reads."""
    r = rundir.open_run(str(run))
    labels = rundir.read_labels(r)
    assert list(labels.columns) == ["id", "target", "round", "time"]


@pytest.mark.parametrize("rounds", [1, [1]])
def test_withdraw_from_python(run, runs, rounds):
    import alloop

    res = alloop.open_run("r").withdraw(rounds=rounds)
    assert res["withdrawn"] == 2 and state_of(run)["outstanding"] == {}
    with pytest.raises(alloop.UserError, match="rounds=N"):
        alloop.open_run("r").withdraw()
