"""Where curves run: in this process, in worker processes (``--jobs``), or in actors on a Ray
cluster (``--engine ray``). Each yields finished curves as they complete; randomness comes from the
seed alone, so the engine never changes a number.

Stopping: while a simulation runs, SIGINT and SIGTERM stop it (``stop_on_signals``), also where
SIGINT was inherited as ignored (a background job of a script, a scheduler): the exception unwinds
the loop, which ends the worker processes at once and keeps every finished curve. A worker process
also dies with its parent (Linux: ``PR_SET_PDEATHSIG``), so even a SIGKILL leaves none behind.
"""

from __future__ import annotations

import _thread
import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import queue as queue_mod
import signal
import socket
import sys
import threading
import time

from alloop.errors import UserError, drops_exceptions
from alloop.sim.curve import run_curve
from alloop.sim.data import SimData
from alloop.sim.learner import make_learner
from alloop.sim.settings import SimSettings

ENGINES = ("local", "ray")
RESTARTS = 4  # times Ray restarts a dead actor (and retries its curves) before the simulation fails
QUEUED = 2  # curves queued per actor, so none waits for the driver between curves
GRACE_S = 5.0  # seconds a stopped worker process has to end after SIGTERM before SIGKILL


class Terminated(KeyboardInterrupt):
    """SIGTERM during a simulation, raised where the program is, so it unwinds as Ctrl-C does."""


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def check_engine(engine: str, address: str | None) -> None:
    """Refuse an unknown engine, or an address without Ray; name how to install a missing Ray."""
    if engine not in ENGINES:
        raise UserError(f"unknown --engine {engine!r}: choose local or ray")
    if engine != "ray" and address is not None:
        raise UserError("--address applies to --engine ray only: add --engine ray, or leave it out")
    if engine == "ray":
        from alloop.io.ray_cluster import require_ray

        require_ray()


@contextlib.contextmanager
def connected(engine: str, address: str | None):
    """Ray connected for the whole simulation when ``engine`` is ray (before anything is written, so
    an unreachable cluster leaves the output directory as it was); nothing for the local engine."""
    check_engine(engine, address)
    if engine != "ray":
        yield
        return
    from alloop.io.ray_cluster import cluster

    _answers(address)
    with cluster(address):
        yield


def _answers(address: str | None) -> None:
    """Fail in seconds where a cluster's HOST:PORT refuses connections: Ray's own connect retries
    a refused address for many minutes. Addresses without a port (auto, ...) are Ray's to judge."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}): check --address, "
            "or start one with `ray start --head`"
        ) from None


@contextlib.contextmanager
def stop_on_signals():
    """While the block runs, SIGINT raises KeyboardInterrupt and SIGTERM ``Terminated``.

    SIGINT is acted on even where it was inherited as ignored: a shell starts background jobs so,
    and a scheduler's SIGINT is still a request to stop. A handler of the program's own (a Python
    callable) is kept, and set again, since connecting to Ray replaces the SIGTERM handler beneath
    Python's. Off the main thread, signals are not ours to handle: nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, old in saved.items():
        mine = not callable(old) or old is signal.default_int_handler
        signal.signal(s, _raise_stop if mine else old)
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


def _raise_stop(signum, frame) -> None:
    if drops_exceptions(frame):  # raised there it would be printed and lost: deliver it again soon
        threading.Timer(0.05, _thread.interrupt_main, (signum,)).start()
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run_all(data, settings, todo, jobs, advance, engine: str = "local", address=None):
    """Yield finished curves: in this process when jobs == 1, else in spawned worker processes; on a
    Ray cluster for ``engine="ray"`` (``jobs`` actors, default one per CPU of the cluster).

    Close the generator (``contextlib.closing``) when the loop ends early: closing it ends the
    workers. ``jobs`` None: one worker per CPU core (at most 8), never more than curves."""
    if engine == "ray":
        yield from _run_on_ray(data, settings, todo, jobs, advance, address)
        return
    jobs = max(1, min(jobs or default_jobs(), len(todo) or 1))
    if jobs == 1:
        learner = make_learner(data, settings)
        for strategy, rep in todo:
            yield _quiet_blas(run_curve, learner, settings, strategy, rep, lambda: advance(1))
        return
    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue()
    ex = cf.ProcessPoolExecutor(
        jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(data, settings, ticks, os.getpid()),
    )
    try:
        pending = {ex.submit(_worker_curve, s, r) for s, r in todo}
        while pending:
            finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            _drain(ticks, advance)
            for fut in finished:
                yield fut.result()
        _drain(ticks, advance)
    except cf.process.BrokenProcessPool:
        raise UserError(
            "a worker process ended abruptly (killed, out of memory, or interrupted): "
            "the finished curves are kept; run the same command again to resume"
        ) from None
    finally:
        _stop_workers(ex)


def _stop_workers(ex: cf.ProcessPoolExecutor) -> None:
    """End the pool's worker processes now: SIGTERM, then SIGKILL for any still there after GRACE_S.

    ``shutdown`` alone lets every worker finish the curve it holds (minutes on a large table), and a
    worker left running outlives its parent. A SIGINT or SIGTERM meanwhile is ignored: the stop is
    under way, and a raise here would leave workers behind."""
    with _signals_held():
        procs = list((getattr(ex, "_processes", None) or {}).values())
        for p in procs:
            with contextlib.suppress(OSError, ValueError):
                p.terminate()
        end = time.monotonic() + GRACE_S
        for p in procs:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                p.join(max(0.0, end - time.monotonic()))
                if p.exitcode is None:
                    p.kill()
                    p.join(1.0)
        ex.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM ignored for the block (main thread only), then handled as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


def _drain(ticks, advance) -> None:
    while True:
        try:
            ticks.get_nowait()
        except queue_mod.Empty:
            return
        advance(1)


_WORKER: dict = {}


def _init_worker(data: SimData, settings: SimSettings, ticks, parent: int) -> None:
    # The parent stops its workers itself (SIGTERM, on any stop of its own): a Ctrl-C that reaches
    # the whole process group must not end a worker mid-write to the queue first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    _WORKER.update(learner=make_learner(data, settings), settings=settings, ticks=ticks)


def die_with_parent(parent: int) -> None:
    """This process gets SIGTERM when its parent ends, even by SIGKILL (Linux: PR_SET_PDEATHSIG);
    ends now if the parent is already gone. Elsewhere the parent's own stop ends its workers."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker_curve(strategy: str, rep: int) -> list[dict]:
    w = _WORKER
    return _quiet_blas(
        run_curve, w["learner"], w["settings"], strategy, rep, lambda: w["ticks"].put(1)
    )


def _quiet_blas(fn, *args):
    """Run with one BLAS thread: parallelism comes from the workers; results do not depend on it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return fn(*args)
    with threadpool_limits(limits=1):
        return fn(*args)


# --- on a Ray cluster -----------------------------------------------------------------------------


class CurveWorker:
    """The Ray actor: builds the learner once (JAX and alloop imported once per actor), then runs
    curves, each from the seed alone, so which actor runs a curve never changes it. Ray restarts an
    actor that dies and retries its curves."""

    def __init__(self, data: SimData, settings: SimSettings) -> None:
        self.settings = settings
        self.learner = make_learner(data, settings)

    def curve(self, strategy: str, rep: int) -> list[dict]:
        return _quiet_blas(run_curve, self.learner, self.settings, strategy, rep, None)


def _run_on_ray(data, settings, todo, jobs, advance, address):
    from alloop.io.ray_cluster import cluster

    if not todo:
        return
    with cluster(address) as ray:
        cpus = ray.cluster_resources().get("CPU", 1)
        workers = max(1, min(jobs or int(cpus) or 1, len(todo)))
        opts = {
            "num_cpus": min(1.0, cpus / workers),
            "max_restarts": RESTARTS,
            "max_task_retries": RESTARTS,
            "scheduling_strategy": "SPREAD",
        }
        shared = ray.put(data)
        actors: list = []
        try:
            actors += [
                ray.remote(CurveWorker).options(**opts).remote(shared, settings)
                for _ in range(workers)
            ]
            for rows in _curves_on(ray, actors, todo):
                advance(len(rows))
                yield rows
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None)
            # a user's mistake found on a worker (a pool file it cannot read): its one line
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            if isinstance(e, ray.exceptions.RayTaskError):
                raise  # a bug: its traceback, as the local engine gives it
            what = (
                f"a Ray worker died and Ray's {RESTARTS} restarts did not help"
                if isinstance(e, ray.exceptions.RayActorError)
                else "the Ray cluster failed"
            )
            raise UserError(
                f"{what} ({_first_line(e)}): the finished curves are kept; run the same command "
                "again to resume (check the workers' memory and logs, or use --engine local)"
            ) from None
        finally:
            with _signals_held():
                for actor in actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)


def _curves_on(ray, actors: list, todo: list[tuple[str, int]]):
    """Each curve as it comes back; a finished actor gets the next, QUEUED at a time per actor."""
    left, running = list(reversed(todo)), {}

    def submit(actor) -> None:
        if left:
            running[actor.curve.remote(*left.pop())] = actor

    for _ in range(QUEUED):  # round by round: every actor gets work before any gets a second curve
        for actor in actors:
            submit(actor)
    while running:
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)  # signals are seen meanwhile
        for ref in done:
            rows = ray.get(ref)
            submit(running.pop(ref))
            yield rows


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
