"""Where curves run: in this process, or in worker processes (``--jobs``). Each yields finished
curves as they complete; randomness comes from the seed alone, so the engine never changes a number."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import queue as queue_mod
import signal

from alloop.errors import UserError
from alloop.sim.curve import run_curve
from alloop.sim.data import SimData
from alloop.sim.learner import make_learner
from alloop.sim.settings import SimSettings


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_all(data, settings, todo, jobs, advance):
    """Yield finished curves; in this process when jobs == 1, else in spawned worker processes."""
    if jobs == 1:
        learner = make_learner(data, settings)
        for strategy, rep in todo:
            yield _quiet_blas(run_curve, learner, settings, strategy, rep, lambda: advance(1))
        return
    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue()
    quiet = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # then Ctrl-C is not ours to act on
    with cf.ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker, initargs=(data, settings, ticks, quiet)
    ) as ex:
        pending = {ex.submit(_worker_curve, s, r) for s, r in todo}
        try:
            while pending:
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(ticks, advance)
                for fut in finished:
                    yield fut.result()
            _drain(ticks, advance)
        except cf.process.BrokenProcessPool:
            ex.shutdown(wait=False, cancel_futures=True)
            raise UserError(
                "a worker process ended abruptly (killed, out of memory, or interrupted): "
                "the finished curves are kept; run the same command again to resume"
            ) from None
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _drain(ticks, advance) -> None:
    while True:
        try:
            ticks.get_nowait()
        except queue_mod.Empty:
            return
        advance(1)


_WORKER: dict = {}


def _init_worker(data: SimData, settings: SimSettings, ticks, quiet: bool) -> None:
    # Ctrl-C reaches the workers too: end them without a traceback, the parent reports the interruption.
    signal.signal(signal.SIGINT, signal.SIG_IGN if quiet else (lambda *_: os._exit(130)))
    _WORKER.update(learner=make_learner(data, settings), settings=settings, ticks=ticks)


def _worker_curve(strategy: str, rep: int) -> list[dict]:
    w = _WORKER
    return _quiet_blas(
        run_curve, w["learner"], w["settings"], strategy, rep, lambda: w["ticks"].put(1)
    )


def _quiet_blas(fn, *args):
    """Run with one BLAS thread: parallelism comes from worker processes, and results do not depend on it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return fn(*args)
    with threadpool_limits(limits=1):
        return fn(*args)
