"""Where `alloop simulate` runs its curves, and how it stops.

``--engine ray`` on a local Ray cluster started here (2 CPUs, as tests/test_ray_engine.py starts
one): the same curves.csv as ``--jobs 1`` (every row, metrics exactly equal; only ``seconds``
differs), resumed across engines, and a user's mistakes in one line with the directory untouched.

Stopping (#32 item 9): ``alloop simulate --jobs 2`` started as users and schedulers start it, then
stopped by SIGTERM, by SIGINT inherited as ignored (a background job of a script), or killed by
SIGKILL: the parent ends with one line, no worker process is left, curves.csv holds only whole
curves, and the same command resumes to the full count. Before, the workers outlived a SIGTERM, and
a SIGINT was ignored while they went on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import alloop_command, assert_user_error, digest, invoke

from alloop.sim import curves_file
from alloop.sim import simulate as sim

STRATEGIES = "random,sld"
# a bundled table, the closed-form linear model and a fixed s: a curve takes a fraction of a second
TINY = ["--dataset", "diabetes", "--model", "linear", "--s", "1", "--strategies", STRATEGIES]
SMALL = [*TINY, "--initial", "5", "--budget", "25", "--batch", "5"]
N_ROUNDS = 5  # n_labels 5, 10, ..., 25
KEY = ["strategy", "rep", "n_labels"]


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


def table(out: Path) -> pd.DataFrame:
    """curves.csv without the timing column, in a canonical row order."""
    df = pd.read_csv(out / curves_file.CURVES_FILE).drop(columns="seconds")
    return df.sort_values(KEY).reset_index(drop=True)


# --- --engine ray ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs (the one of the session when test_ray_engine.py started it)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    warnings.filterwarnings(
        "ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning
    )  # fork-and-exec of Ray's processes
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: 2 strategies x 2 repetitions in this process (--jobs 1)."""
    out = tmp_path_factory.mktemp("sim-local") / "out"
    ok(
        invoke(
            ["simulate", *SMALL, "--reps", "2", "--jobs", "1", "--out", out, "--json"], out.parent
        )
    )
    return out


def test_ray_gives_the_curves_of_one_process_and_resumes(ray_cluster, one_process, tmp_path):
    """Repetition 0 on Ray through the Python API, then the CLI resumes repetition 1 on Ray: the
    same curves.csv as --jobs 1, row for row, every metric and stopping signal exactly equal."""
    out = tmp_path / "ray"
    first = sim.run_simulation(
        dataset="diabetes",
        model={"kind": "linear"},
        s=1.0,
        strategy_list=STRATEGIES.split(","),
        reps=1,
        out=str(out),
        engine="ray",
        initial=5,
        budget=25,
        batch=5,
    )
    assert set(first["strategies"]) == set(STRATEGIES.split(","))
    res = ok(invoke(["simulate", *SMALL, "--reps", "2", "--engine", "ray", "--out", out], tmp_path))
    assert "resuming: 2 finished curves" in res.stderr
    a, b = table(one_process), table(out)
    assert len(a) == 2 * 2 * N_ROUNDS
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert untimed(json.loads((one_process / "summary.json").read_text())) == untimed(
        json.loads((out / "summary.json").read_text())
    )


def test_a_ray_worker_killed_mid_curve_changes_nothing(ray_cluster, one_process, tmp_path):
    """An actor SIGKILLed while it runs a curve: Ray restarts it and runs the curve again, from the
    seed, so curves.csv is still that of --jobs 1."""
    killed, done = [], threading.Event()
    killer = threading.Thread(target=kill_a_busy_actor, args=(killed, done), daemon=True)
    killer.start()
    try:
        sim.run_simulation(
            dataset="diabetes",
            model={"kind": "linear"},
            s=1.0,
            strategy_list=STRATEGIES.split(","),
            reps=2,
            out=str(tmp_path / "ray"),
            engine="ray",
            initial=5,
            budget=25,
            batch=5,
        )
    finally:
        done.set()
        killer.join()
    assert killed, "no actor was caught running a curve"
    pd.testing.assert_frame_equal(table(one_process), table(tmp_path / "ray"), check_exact=True)


def kill_a_busy_actor(killed: list, done: threading.Event) -> None:
    """SIGKILL the first process Ray titles as running CurveWorker.curve."""
    while not done.is_set():
        for d in Path("/proc").iterdir():
            try:
                busy = d.name.isdigit() and (d / "cmdline").read_bytes().startswith(
                    b"ray::CurveWorker.curve"
                )
            except OSError:
                continue
            if busy:
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
                return
        time.sleep(0.01)


def untimed(d):
    """A summary without its timings (seconds, seconds_per_round)."""
    if isinstance(d, dict):
        return {k: untimed(v) for k, v in d.items() if not k.startswith("seconds")}
    return d


def test_ray_mistakes_are_one_line_and_leave_the_directory_alone(tmp_path, monkeypatch):
    out = tmp_path / "kept"
    ok(invoke(["simulate", *SMALL, "--reps", "1", "--jobs", "1", "--out", out], tmp_path))
    before = digest(out)
    again = ["simulate", *SMALL, "--reps", "2", "--out", out]
    # a refused address: Ray itself would retry it for many minutes
    assert_user_error(
        invoke([*again, "--engine", "ray", "--address", "127.0.0.1:9"], tmp_path),
        "cannot reach a Ray cluster at '127.0.0.1:9'",
        "--address",
    )
    assert_user_error(invoke([*again, "--engine", "spark"], tmp_path), "--engine")
    assert_user_error(invoke([*again, "--address", "auto"], tmp_path), "--engine ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert_user_error(invoke([*again, "--engine", "ray"], tmp_path), "pip install 'alloop[ray]'")
    fresh = tmp_path / "fresh"
    assert_user_error(
        invoke(["simulate", *SMALL, "--engine", "ray", "--out", fresh], tmp_path), "alloop[ray]"
    )
    assert digest(out) == before and not fresh.exists()


# --- stopping a running simulation ---------------------------------------------------------------


# execs its arguments with SIGINT ignored, as a non-interactive shell starts a background job (the
# process keeps its pid; preexec_fn would fork this process, which runs JAX's threads)
IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def start(out: Path, reps: int, ignore_sigint: bool = False, args=SMALL) -> subprocess.Popen:
    """`alloop simulate --jobs 2` in a subprocess, as a script or scheduler starts it."""
    command = alloop_command()
    if ignore_sigint:
        command = [sys.executable, "-c", IGNORING_SIGINT, *command]
    return subprocess.Popen(
        [*command, "simulate", *args, "--reps", str(reps), "--jobs", "2", "--out", out],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> dict[int, str]:
    """This process's children: pid -> start time (to tell a reused pid apart)."""
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st is not None and int(st[1]) == pid:
                kids[int(d.name)] = st[19]
    return kids


def alive(procs: dict[int, str]) -> list[int]:
    """Those still running (a zombie waiting for its new parent to reap it has ended)."""
    return [p for p, t in procs.items() if (st := _stat(p)) and st[19] == t and st[0] != "Z"]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        if proc.poll() is not None:
            _, errs = proc.communicate()
            raise AssertionError(f"simulate ended (exit {proc.returncode}) too soon:\n{errs}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def workers_of(proc: subprocess.Popen) -> dict[int, str]:
    """Once both worker processes exist: every child (the workers, multiprocessing's tracker)."""
    kids = children(proc.pid)
    spawned = [p for p in kids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return kids if len(spawned) == 2 else {}


def lines(out: Path) -> int:
    path = out / curves_file.CURVES_FILE
    return path.read_text().count("\n") if path.exists() else 0


def whole_curves(out: Path) -> int:
    """The curves in curves.csv; every one complete (a stop never leaves part of one)."""
    path = out / curves_file.CURVES_FILE
    if not path.exists():
        return 0
    sizes = pd.read_csv(path).groupby(["strategy", "rep"]).size()
    assert (sizes == N_ROUNDS).all(), sizes
    return len(sizes)


def assert_stopped(proc: subprocess.Popen, workers: dict[int, str], code: int) -> None:
    _, errs = proc.communicate(timeout=60)
    assert proc.returncode == code, (proc.returncode, errs)
    assert "interrupted: finished curves are kept in curves.csv" in errs, errs
    assert "Traceback" not in errs, errs
    end = time.monotonic() + 30
    while alive(workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not alive(workers), f"left running: {alive(workers)}"


def resume(out: Path, reps: int, done: int) -> None:
    """The same command again (one process here) finishes the rest: all curves, each once."""
    res = subprocess.run(
        [*alloop_command(), "simulate", *SMALL, "--reps", str(reps), "--jobs", "1", "--out", out],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    if done:
        assert f"resuming: {done} finished curves" in res.stderr, res.stderr
    assert whole_curves(out) == 2 * reps


def test_sigterm_stops_the_workers_and_keeps_the_finished_curves(tmp_path):
    out, reps = tmp_path / "out", 12
    proc = start(out, reps)
    try:
        workers = wait_for(lambda: workers_of(proc), proc)
        wait_for(lambda: lines(out) > N_ROUNDS, proc)  # mid-run: a curve done, more to go
        proc.send_signal(signal.SIGTERM)
        assert_stopped(proc, workers, 143)
    finally:
        proc.kill()
    done = whole_curves(out)
    assert 1 <= done < 2 * reps
    resume(out, reps, done)


def test_a_stop_does_not_wait_for_the_curves_in_progress(tmp_path):
    """MLP curves of 300 labels (minutes each here): the workers are ended, not waited for. Before,
    the parent waited for every curve a worker held (#32: over 90 s)."""
    out = tmp_path / "out"
    slow = [*TINY, "--model", "mlp", "--strategies", "random", "--initial", "5", "--budget", "300"]
    proc = start(out, 2, args=slow)
    try:
        workers = wait_for(lambda: workers_of(proc), proc)
        time.sleep(2)  # the workers hold their curves
        proc.send_signal(signal.SIGTERM)
        assert_stopped(proc, workers, 143)
    finally:
        proc.kill()
    assert whole_curves(out) == 0


def test_sigint_stops_it_even_when_started_with_sigint_ignored(tmp_path):
    """A background job of a non-interactive shell starts with SIGINT ignored; a scheduler's or a
    user's SIGINT still stops it, here while the workers are still starting."""
    out, reps = tmp_path / "out", 2
    proc = start(out, reps, ignore_sigint=True)
    try:
        workers = wait_for(lambda: workers_of(proc), proc)
        proc.send_signal(signal.SIGINT)
        assert_stopped(proc, workers, 130)
    finally:
        proc.kill()
    resume(out, reps, whole_curves(out))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent(tmp_path):
    out = tmp_path / "out"
    proc = start(out, 2)
    try:
        workers = wait_for(lambda: workers_of(proc), proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        end = time.monotonic() + 60
        while alive(workers) and time.monotonic() < end:
            time.sleep(0.1)
        assert not alive(workers), f"left running: {alive(workers)}"
    finally:
        proc.kill()
    whole_curves(out)
