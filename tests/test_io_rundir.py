"""The run directory: names, creation, the commit point, garbage collection, history, the lock."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alloop.errors import UserError
from alloop.io import atomic, rundir
from alloop.io.lock import run_lock
from alloop.io.rundir import (
    RUNS_ENV,
    append_history,
    commit,
    create_run,
    load_checkpoint,
    open_run,
    read_history,
    read_labels,
    resolve_run_path,
    run_files_digest,
    runs_root,
)

CONFIG = {"targets": ["y"], "id_kind": "int", "task": "regression", "pool": "/data/pool.parquet"}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A working directory with an empty ./runs and no ALLOOP_RUNS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUNS_ENV, raising=False)
    return tmp_path / "runs"


@pytest.fixture
def run(runs):
    return create_run(runs / "exp", CONFIG)


def labels(ids, round_=1):
    ids = np.asarray(ids, dtype=np.int64)
    return pd.DataFrame(
        {
            "id": ids,
            "y": ids * 0.5,
            "round": np.full(len(ids), round_, np.int64),
            "time": ["2024-01-01T00:00:00Z"] * len(ids),
        }
    )


def params(scale=1.0):
    return {"w": np.full((3, 1), scale, np.float32), "b": np.zeros(1, np.float32)}


def query(ids):
    return pd.DataFrame(
        {"rank": np.arange(1, len(ids) + 1), "id": ids, "score": np.linspace(1, 0, len(ids))}
    )


# --- names ------------------------------------------------------------------------------------


def test_runs_root_default_and_env(runs, monkeypatch, tmp_path):
    assert runs_root() == runs
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "elsewhere"))
    assert runs_root() == tmp_path / "elsewhere"
    assert resolve_run_path("exp") == tmp_path / "elsewhere" / "exp"


@pytest.mark.parametrize(
    "name, expect",
    [
        ("exp1", "runs/exp1"),
        ("a.b_c-d", "runs/a.b_c-d"),
        ("./exp", "exp"),
        ("sub/exp", "sub/exp"),
        ("..", ".."),
        (".hidden", ".hidden"),
    ],
)
def test_resolve_run_path(runs, name, expect):
    assert resolve_run_path(name) == (runs.parent / expect).resolve()


def test_resolve_absolute_and_home(runs, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_run_path("~/r") == tmp_path / "home" / "r"
    assert resolve_run_path(str(tmp_path / "x")) == tmp_path / "x"


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "run name is empty"),
        ("  ", "run name is empty"),
        ("-x", "not valid: use letters, digits"),
        ("a b", "not valid"),
        ("exp!", "not valid"),
    ],
)
def test_bad_run_names(runs, name, message):
    with pytest.raises(UserError, match=message):
        resolve_run_path(name)


# --- create / open ----------------------------------------------------------------------------


def test_create_run_layout_and_initial_state(run, runs):
    assert run.path == runs / "exp" and run.name == "exp"
    assert sorted(p.name for p in run.path.iterdir()) == [
        "checkpoints",
        "config.json",
        "labels",
        "queries",
        "state.json",
    ]
    assert json.loads((run.path / "config.json").read_text()) == CONFIG
    state = json.loads((run.path / "state.json").read_text())
    assert state == {
        "generation": 0,
        "round": 0,
        "labels_file": None,
        "labels_sha256": None,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "outstanding": {},
        "n_labels": 0,
        "labels_at_checkpoint": 0,
        "queries": [],
    }
    assert sorted(p.name for p in runs.iterdir()) == ["exp"]  # no temp dir left behind
    opened = open_run("exp")
    assert opened == run
    assert opened.targets == ("y",) and opened.id_kind == "int" and opened.task == "regression"
    assert (
        opened.labels_path is None
        and opened.checkpoint_path is None
        and opened.outstanding_ids.size == 0
    )


def test_create_run_with_extra_state_and_into_empty_dir(runs):
    (runs / "e").mkdir(parents=True)
    r = create_run(runs / "e", CONFIG, {"seed": 3})
    assert r.state["seed"] == 3 and open_run("e").state["seed"] == 3


@pytest.mark.parametrize("existing", ["dir", "file"])
def test_create_run_refuses_existing(runs, existing):
    target = runs / "exp"
    runs.mkdir()
    if existing == "dir":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    before = run_files_digest(runs)
    with pytest.raises(
        UserError, match="run 'exp' already exists at runs/exp: pick another name or delete it"
    ):
        create_run(target, CONFIG)
    assert run_files_digest(runs) == before


def test_create_run_failure_leaves_nothing(runs, monkeypatch):
    real = rundir.write_json_atomic

    def fail_on_state(path, obj):
        if Path(path).name == "state.json":
            raise OSError("disk full")
        real(path, obj)

    monkeypatch.setattr(rundir, "write_json_atomic", fail_on_state)
    with pytest.raises(UserError, match="cannot create run 'exp'"):
        create_run(runs / "deep" / "exp", CONFIG)
    assert not runs.exists()


def test_create_run_is_invisible_until_complete(runs, monkeypatch):
    """The run appears at its path only once config.json and state.json are both written."""
    seen = []
    real = rundir.write_json_atomic
    monkeypatch.setattr(
        rundir, "write_json_atomic", lambda p, o: (seen.append((runs / "exp").exists()), real(p, o))
    )
    create_run(runs / "exp", CONFIG)
    assert seen == [False, False] and open_run("exp").generation == 0


def test_create_run_refuses_unjsonable_config(runs):
    with pytest.raises(ValueError):
        create_run(runs / "exp", {"x": float("nan")})
    assert not runs.exists()


def test_open_missing_run(runs):
    with pytest.raises(
        UserError,
        match=r"^no run named 'nope' \(looked in runs/nope\): create it with `alloop init nope --pool PATH`$",
    ):
        open_run("nope")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "state.json").write_text('{"generation": 1,'), "unreadable state.json"),
        (lambda r: (r / "config.json").write_text("not json"), "unreadable config.json"),
        (lambda r: (r / "state.json").write_text("[1, 2]"), "state.json that is not a JSON object"),
        (lambda r: (r / "state.json").write_text("{}"), "state.json without a generation"),
        (lambda r: (r / "state.json").unlink(), "is not an alloop run \\(no state.json\\)"),
    ],
)
def test_open_damaged_run(run, damage, message):
    damage(run.path)
    with pytest.raises(UserError, match=message):
        open_run("exp")


def test_open_by_path(run, tmp_path):
    assert open_run(str(run.path)).path == run.path
    assert open_run("./runs/exp").name == "exp"


# --- commit -----------------------------------------------------------------------------------


def test_read_labels_empty_frame(run):
    df = read_labels(run)
    assert list(df.columns) == ["id", "y", "round", "time"] and len(df) == 0
    assert df["id"].dtype == np.int64 and df["y"].dtype == np.float64


def test_commit_everything_then_reopen(run):
    r = commit(
        run,
        labels=labels([4, 2]),
        checkpoint=(params(), {"epochs": 5}),
        query=(query([7, 8]), "csv"),
        state={"round": 1, "outstanding": {"7": 1, "8": 1}, "extra": "kept"},
    )
    s = r.state
    assert s["generation"] == 1 and s["round"] == 1 and s["extra"] == "kept"
    assert s["labels_file"] == "labels/labels-000001.parquet" and s["n_labels"] == 2
    assert s["checkpoint"] == "checkpoints/ckpt-000001.npz" and s["labels_at_checkpoint"] == 2
    assert s["queries"] == [
        {
            "round": 1,
            "file": "queries/round-0001.csv",
            "sha256": atomic.sha256_file(r.path / "queries/round-0001.csv"),
            "time": s["queries"][0]["time"],  # when it was asked (query --reask-after)
        }
    ]
    assert s["queries"][0]["time"].endswith("Z")
    assert s["labels_sha256"] == atomic.sha256_file(r.path / s["labels_file"])
    again = open_run("exp")
    assert again.state == s and again.outstanding_ids.tolist() == [7, 8]
    pd.testing.assert_frame_equal(read_labels(again), labels([4, 2]))
    tree, meta = load_checkpoint(again, params(0))
    np.testing.assert_array_equal(tree["w"], params()["w"]) and meta == {"epochs": 5}
    assert meta == {"epochs": 5}


def test_load_checkpoint_none_before_training(run):
    assert load_checkpoint(run, params()) is None


def test_gc_keeps_previous_generation_only(run):
    r = run
    for g in range(1, 5):
        r = commit(
            r,
            labels=labels(range(g)),
            checkpoint=(params(g), {}),
            query=(query([g]), "jsonl"),
            state={"round": g},
        )
    assert sorted(p.name for p in (r.path / "labels").iterdir()) == [
        "labels-000003.parquet",
        "labels-000004.parquet",
    ]
    assert sorted(p.name for p in (r.path / "checkpoints").iterdir()) == [
        "ckpt-000003.npz",
        "ckpt-000004.npz",
    ]
    assert len(list((r.path / "queries").iterdir())) == 4 and [
        q["round"] for q in r.state["queries"]
    ] == [1, 2, 3, 4]
    r = commit(r, state={"round": 4, "note": "no files"})
    assert r.state["labels_file"] == "labels/labels-000004.parquet"
    # state.json remembers the file each kind replaced last, so generation 3 stays as the fallback
    assert r.state["previous"]["labels_file"] == "labels/labels-000003.parquet"
    assert sorted(p.name for p in (r.path / "labels").iterdir()) == [
        "labels-000003.parquet",
        "labels-000004.parquet",
    ]


def test_state_only_commit_keeps_files(run):
    r = commit(run, labels=labels([1]), state={"round": 0})
    r = commit(r, state={"outstanding": {"5": 1}})
    assert r.generation == 2 and r.state["labels_file"] == "labels/labels-000001.parquet"
    assert read_labels(r).id.tolist() == [1]


def test_query_for_a_committed_round_is_refused(run):
    r = commit(run, query=(query([1]), "csv"), state={"round": 1})
    before = run_files_digest(r.path)
    with pytest.raises(ValueError, match="already committed"):
        commit(r, query=(query([2]), "csv"))
    assert run_files_digest(r.path) == before


def test_labels_frame_must_have_columns(run):
    with pytest.raises(ValueError, match="lacks columns"):
        commit(run, labels=pd.DataFrame({"id": [1]}))


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3])
def test_failed_commit_changes_nothing(run, monkeypatch, fail_at):
    """os.replace fails at the labels, checkpoint, query or state.json write: files stay exactly as they were."""
    r = commit(
        run,
        labels=labels([1]),
        checkpoint=(params(), {}),
        query=(query([1]), "csv"),
        state={"round": 1},
    )
    before = run_files_digest(r.path)
    calls, real = [], os.replace

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) - 1 == fail_at:
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="power cut"):
        commit(
            r,
            labels=labels([1, 2]),
            checkpoint=(params(2), {}),
            query=(query([3]), "csv"),
            state={"round": 2},
        )
    assert (
        Path(calls[-1]).name
        == ["labels-000002.parquet", "ckpt-000002.npz", "round-0002.csv", "state.json"][fail_at]
    )
    assert run_files_digest(r.path) == before
    assert open_run("exp").state == r.state


def test_kill_before_state_leaves_orphans_that_the_next_commit_removes(run, monkeypatch):
    r = commit(run, labels=labels([1]), state={"round": 1})
    before = open_run("exp").state
    real = rundir.write_bytes_atomic

    def killed_at_state(path, data):
        if path.name == "state.json":
            raise KeyboardInterrupt
        real(path, data)

    with monkeypatch.context() as m:
        m.setattr(rundir, "_committed", lambda *a: True)  # as if killed: no cleanup runs
        m.setattr(rundir, "write_bytes_atomic", killed_at_state)
        with pytest.raises(KeyboardInterrupt):
            commit(r, labels=labels([1, 2]), query=(query([5]), "csv"), state={"round": 2})
    assert open_run("exp").state == before  # the commit point was never passed
    assert (r.path / "labels/labels-000002.parquet").exists()
    r2 = commit(
        open_run("exp"), labels=labels([1, 2, 3]), query=(query([5]), "csv"), state={"round": 2}
    )
    assert sorted(p.name for p in (r2.path / "labels").iterdir()) == [
        "labels-000001.parquet",
        "labels-000002.parquet",
    ]
    assert r2.state["labels_sha256"] == atomic.sha256_file(r2.path / "labels/labels-000002.parquet")
    assert read_labels(r2).id.tolist() == [1, 2, 3]


def test_kill_after_state_before_gc_is_a_complete_new_state(run, monkeypatch):
    r = commit(run, labels=labels([1]), state={"round": 1})
    r = commit(r, labels=labels([1, 2]), state={"round": 1})
    monkeypatch.setattr(
        rundir, "_collect_garbage", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        commit(r, labels=labels([1, 2, 3]), state={"round": 1})
    now = open_run("exp")
    assert now.generation == 3 and read_labels(now).id.tolist() == [1, 2, 3]


def test_interrupt_just_after_the_commit_point_keeps_the_new_files(run, monkeypatch):
    real = rundir.write_bytes_atomic

    def interrupted_after_state(path, data):
        real(path, data)
        if path.name == "state.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_bytes_atomic", interrupted_after_state)
    with pytest.raises(KeyboardInterrupt):
        commit(run, labels=labels([1, 2]), checkpoint=(params(), {}), state={"round": 1})
    now = open_run("exp")
    assert now.generation == 1 and read_labels(now).id.tolist() == [1, 2]
    assert load_checkpoint(now, params()) is not None


def test_temp_leftovers_are_collected(run):
    (run.path / ".tmp-state.json-1-ab").write_text("x")
    (run.path / "checkpoints" / ".tmp-ckpt-000009.npz-1-ab").write_text("x")
    r = commit(run, state={"round": 0})
    assert not list(r.path.rglob(".tmp-*"))


def test_corrupt_or_missing_files_are_reported(run):
    r = commit(run, labels=labels([1]), checkpoint=(params(), {}))
    ckpt = r.path / r.state["checkpoint"]
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 1
    ckpt.write_bytes(bytes(data))
    with pytest.raises(
        UserError,
        match=r"checkpoint checkpoints/ckpt-000001.npz of run 'exp' is corrupt: run `alloop verify exp`",
    ):
        load_checkpoint(r, params())
    (r.path / r.state["labels_file"]).write_bytes(b"junk")
    with pytest.raises(
        UserError, match="labels file labels/labels-000001.parquet of run 'exp' is corrupt"
    ):
        read_labels(r)
    (r.path / r.state["labels_file"]).unlink()
    with pytest.raises(UserError, match="is missing: run `alloop verify exp`"):
        read_labels(r)


def test_checkpoint_model_mismatch_names_run(run):
    r = commit(run, checkpoint=(params(), {}))
    with pytest.raises(
        UserError, match=r"at w: shape \(3,1\) stored, \(4,1\) expected.*alloop train exp --fresh"
    ):
        load_checkpoint(r, {"w": np.zeros((4, 1), np.float32), "b": np.zeros(1, np.float32)})


def test_str_id_run_labels(runs):
    r = create_run(
        runs / "s", {**CONFIG, "id_kind": "str", "task": "classification", "targets": ["label"]}
    )
    empty = read_labels(r)
    assert list(empty.columns) == ["id", "label", "round", "time"] and empty["id"].dtype == object
    df = pd.DataFrame({"id": ["a", "b"], "label": ["x", "y"], "round": [1, 1], "time": ["t", "t"]})
    r = commit(r, labels=df, state={"outstanding": {"c": 1}})
    assert read_labels(r)["id"].tolist() == ["a", "b"] and r.outstanding_ids.tolist() == ["c"]


# --- history and digest -----------------------------------------------------------------------


def test_history_appends_with_time_and_survives_a_torn_line(run):
    append_history(run, {"command": "init", "n": np.int64(3), "loss": float("nan")})
    with open(run.path / "history.jsonl", "a") as f:
        f.write('{"command": "tra')  # torn by a crash
    assert [h["command"] for h in read_history(run)] == ["init"]
    append_history(run, {"command": "query", "k": 10})
    hist = read_history(run)
    assert [h["command"] for h in hist] == ["init", "query"]
    assert hist[0]["n"] == 3 and hist[0]["loss"] is None and hist[0]["time"].endswith("Z")
    assert read_history(open_run("exp"))[1]["k"] == 10


def test_read_history_without_file(run):
    assert read_history(run) == []


def test_digest_lists_every_file_but_the_lock(run):
    with run_lock(run.path):
        digest = run_files_digest(run.path)
    assert set(digest) == {"config.json", "state.json"}
    r = commit(run, labels=labels([1]))
    assert "labels/labels-000001.parquet" in run_files_digest(r.path)


# --- lock -------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_names_the_holder(run):
    with run_lock(run.path):
        assert (run.path / ".lock").read_text().strip() == str(os.getpid())
        t0 = time.monotonic()
        with pytest.raises(
            UserError,
            match=rf"^run 'exp' is busy: another alloop command \(pid {os.getpid()}\) is using it; "
            "wait for it to finish or pass --wait SECONDS$",
        ):
            with run_lock(run.path, wait=0.3):
                pass
        assert 0.25 < time.monotonic() - t0 < 2
    with run_lock(run.path, wait=0):
        pass


def test_lock_waits_for_release(run):
    held, release = threading.Event(), threading.Event()

    def holder():
        with run_lock(run.path):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    threading.Timer(0.2, release.set).start()
    with run_lock(run.path, wait=5):
        pass
    t.join()


def test_lock_released_on_exception(run):
    with pytest.raises(RuntimeError):
        with run_lock(run.path):
            raise RuntimeError("boom")
    with run_lock(run.path, wait=0):
        pass


def test_lock_of_sigkilled_holder_is_free(run):
    code = (
        "import sys, time; from alloop.io.lock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run.path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"pid {proc.pid}\)"):
            with run_lock(run.path, wait=0):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert proc.returncode == -signal.SIGKILL
        with run_lock(run.path, wait=2):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_lock_on_missing_run(tmp_path):
    with pytest.raises(UserError, match="run 'ghost' not found"):
        with run_lock(tmp_path / "ghost"):
            pass
