"""Crash safety: SIGKILL at random moments, concurrent ingests, resumed training, determinism.

A run killed at any instant must be at its previous or next complete state: `verify` passes, every
label acknowledged before the kill is there, and the next command succeeds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alloop.commands.query import query as query_cmd
from alloop.commands.train import train as train_cmd
from alloop.commands.verify import verify_run
from alloop.io import rundir

N_POOL = 400


def _alloop(*args, env, **kw):
    return subprocess.run(
        [sys.executable, "-m", "alloop", *args], env=env, capture_output=True, text=True, **kw
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A run with 12 seed labels, trained, one query outstanding, and the filled answer file."""
    root = tmp_path_factory.mktemp("rel")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_POOL, 3))
    y = x @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=N_POOL)
    pool = pd.DataFrame(x, columns=["a", "b", "c"])
    pool.insert(0, "id", np.arange(N_POOL))
    pool["target"] = y
    pool.to_parquet(root / "pool.parquet", index=False)
    pool.iloc[:12][["id", "target"]].to_csv(root / "seed.csv", index=False)
    env = {**os.environ, "ALLOOP_RUNS": str(root / "runs")}
    r = _alloop(
        "init",
        "base",
        "--pool",
        str(root / "pool.parquet"),
        "--labels",
        str(root / "seed.csv"),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    for cmd in (["train", "base"], ["query", "base", "-k", "8"]):
        assert _alloop(*cmd, env=env).returncode == 0
    q = pd.read_csv(root / "runs/base/queries/round-0001.csv")
    q["target"] = pool.set_index("id").loc[q["id"], "target"].to_numpy()
    q.to_csv(root / "answers.csv", index=False)
    return root


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template / "runs" / "base", dest)
    return dest


def _labels(run_path: Path) -> dict:
    df = rundir.read_labels(rundir.open_run(str(run_path)))
    return dict(zip(df["id"].tolist(), df["target"].tolist()))


def _kill_during(cmd: list[str], delay: float, env) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "alloop", *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


KILLS = [(verb, i) for verb in ("ingest", "train", "query") for i in range(10)]


@pytest.mark.parametrize("verb,i", KILLS)
def test_sigkill_leaves_a_complete_state(template, tmp_path, verb, i):
    """30 seeded kills across ingest, train and query."""
    rng = np.random.default_rng(1000 * ("ingest", "train", "query").index(verb) + i)
    run_path = _copy(template, tmp_path / "run")
    before = _labels(run_path)
    env = dict(os.environ)
    cmd = {
        "ingest": ["ingest", str(run_path), str(template / "answers.csv")],
        "train": ["train", str(run_path), "--fresh"],
        "query": ["query", str(run_path), "-k", "5"],
    }[verb]
    rc = _kill_during(cmd, float(rng.uniform(0.3, 4.0)), env)
    res = verify_run(str(run_path))
    assert res["ok"], res["problems"]
    after = _labels(run_path)
    assert all(after.get(k) == v for k, v in before.items())  # nothing acknowledged is lost
    if rc == 0 and verb == "ingest":
        assert len(after) == len(before) + 8
    # the next command succeeds
    nxt = query_cmd(str(run_path), k=3)
    assert Path(nxt["path"]).exists()
    assert verify_run(str(run_path))["ok"]


def test_concurrent_ingests_keep_every_label_once(template, tmp_path):
    run_path = _copy(template, tmp_path / "run")
    answers = pd.read_csv(template / "answers.csv")
    files = []
    for j in range(4):
        part = answers.iloc[2 * j : 2 * j + 2]
        f = tmp_path / f"part{j}.csv"
        part.to_csv(f, index=False)
        files.append(f)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alloop",
                "ingest",
                str(run_path),
                str(f),
                "--no-train",
                "--wait",
                "120",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for f in files
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    labels = rundir.read_labels(rundir.open_run(str(run_path)))
    assert labels["id"].is_unique
    assert set(answers["id"]) <= set(labels["id"])
    assert len(labels) == 12 + len(answers)
    assert verify_run(str(run_path))["ok"]


def test_lock_wait_times_out_with_a_clear_message(template, tmp_path):
    from alloop.io.lock import run_lock

    run_path = _copy(template, tmp_path / "run")
    with run_lock(run_path):
        r = _alloop("query", str(run_path), "--wait", "0.5", env=dict(os.environ))
    assert r.returncode == 2
    assert "busy" in r.stderr and "Traceback" not in r.stderr


def _final_params(run_path: Path):
    run = rundir.open_run(str(run_path))
    from alloop.training import fit as fitting

    tree, meta = rundir.load_checkpoint(run, fitting.checkpoint_like(run.config))
    assert not meta.get("partial")
    return tree


def test_killed_training_resumes_to_the_uninterrupted_result(template, tmp_path):
    straight = _copy(template, tmp_path / "straight")
    train_cmd(str(straight), fresh=True, epochs=6000)
    killed = _copy(template, tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "alloop", "train", str(killed), "--fresh", "--epochs", "6000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a mid-training checkpoint is committed, then kill
        st = rundir.open_run(str(killed)).state
        if st.get("training") and st["training"]["epochs_done"] >= 1200:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = rundir.open_run(str(killed)).state
    assert st.get("training"), "the kill came too late to test resuming"
    train_cmd(str(killed), epochs=6000)
    a, b = _final_params(straight), _final_params(killed)
    for key in ("params", "tangent"):
        for la, lb in zip(_leaves(a[key]), _leaves(b[key])):
            np.testing.assert_allclose(la, lb, rtol=1e-6, atol=1e-7)


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_same_inputs_give_byte_identical_files(template, tmp_path):
    digests = []
    for name in ("one", "two"):
        run_path = _copy(template, tmp_path / name)
        train_cmd(str(run_path), fresh=True)
        query_cmd(str(run_path), k=6)
        run = rundir.open_run(str(run_path))
        files = {q["file"] for q in run.state["queries"]} | {run.state["checkpoint"]}
        digests.append({f: rundir.run_files_digest(run_path)[f] for f in files})
    assert digests[0] == digests[1]
