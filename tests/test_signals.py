"""Stopping a command (#32, item 9, for the commands outside ``alloop simulate``): SIGTERM, what
schedulers and ``kill`` send, unwinds as Ctrl-C does, so ``finally`` blocks run (a local Ray
cluster is shut down, prefetch threads stop), with one line and exit 143, the run at its last commit.
Before, SIGTERM ended the process on the spot; with Ray connected, Ray's own handler dumped a stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import alloop_command, digest

from alloop.io.lock import run_lock
from alloop.io.rundir import RUNS_ENV


def _wait_for(path: Path, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} never written")


def test_sigterm_stops_a_command_like_ctrl_c(run, runs, tmp_path):
    """`alloop train` waiting for the run's lock (held here) is told to stop: one line, exit 143."""
    before = digest(run)
    env = {**os.environ, RUNS_ENV: str(runs), "JAX_PLATFORMS": "cpu"}
    with run_lock(run, 5):
        proc = subprocess.Popen(
            [*alloop_command(), "train", "r", "--wait", "120"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_until_it_catches_sigterm(proc.pid)  # main() has started (before, nothing to undo)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, errs)
    assert errs.strip().splitlines() == ["interrupted: the run is at its last committed state"]
    assert digest(run) == before


def _wait_until_it_catches_sigterm(pid: int, timeout: float = 60) -> None:
    """Until the process has its own SIGTERM handler (the SigCgt mask of /proc/PID/status)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(status.split("SigCgt:")[1].split()[0], 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.05)
    raise AssertionError("the command never installed its SIGTERM handler")


CHILD = """
import json, os, sys, time
from alloop.cli import stop_like_ctrl_c
from alloop.io.ray_cluster import cluster

stop_like_ctrl_c()  # as alloop's main() does
try:
    with cluster(None) as ray:
        node = ray._private.worker._global_node
        pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
        open(sys.argv[1], "w").write(json.dumps(pids))
        time.sleep(300)
except KeyboardInterrupt:
    open(sys.argv[2], "w").write("unwound")
"""


@pytest.mark.slow
def test_sigterm_shuts_a_local_ray_cluster_down(tmp_path):
    pytest.importorskip("ray")
    pids_file, unwound = tmp_path / "pids.json", tmp_path / "unwound"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(pids_file), str(unwound)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = json.loads(_wait_for(pids_file))
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert unwound.exists(), f"no unwinding (exit {proc.returncode}):\n{errs[-2000:]}"
    assert "SIGTERM received" not in errs  # Ray's handler, which skipped every finally
    assert proc.returncode == 0
    alive = [p for p in pids if _running(p)]
    assert not alive, f"Ray processes left running: {alive}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
