"""Scoring the pool on a Ray cluster (``alloop query --engine ray``), reduced exactly to what the local stream keeps.

Every strategy keeps the ``n`` best rows of the pool by a per-row score (``Strategy.keep``: a model's
score, or for the batch strategies a seeded hash of the id, a uniform sample any partition can compute),
then picks among them on one machine. So the pool can be split anywhere: each part keeps its own best
``n`` rows (``partition_top``), and the best ``n`` of their union (``reduce``) are the rows one stream over
the whole pool keeps, by the same order (score descending, NaN last, then id ascending), whatever the
parts, their order or their sizes. The pick then runs on the driver exactly as in a local query.

With Ray: Ray Data reads the pool's files (``read_parquet``, local or object storage) and an actor pool
runs ``Scorer`` over them with ``map_batches``; each actor builds the round (model, scorer) once from a
recipe the driver ships (no run directory is needed on the workers) and jits its scorer once. An actor
that dies is restarted and its batch retried by Ray Data; the reduction does not depend on which actor
scored what, so the result is the same.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.io.ray_cluster import cluster
from alloop.strategies import stream

SCORE_COL = "__alloop_score__"  # a kept row's score (NaN scores already ranked as -inf)
SEEN_COL = "__alloop_seen__"  # rows a call scored, on one extra row of nulls (progress)
ROWS_PER_CALL = 262144  # rows per map_batches call: each call returns at most its n best rows
KILL_ENV = "ALLOOP_TEST_KILL_WORKER"  # tests: path of a file whose first claimant (an actor) kills itself with SIGKILL


# --- the exact reduction (no Ray needed) -----------------------------------------------------------


def partition_top(table: pa.Table, info: poolio.PoolInfo, score: Callable, n_keep: int, leave_out: Callable) -> pa.Table:
    """The ``n_keep`` best rows of one part of the pool as a table: its columns as stored, the score, and one
    extra row of nulls whose SEEN_COL counts the part's rows."""
    top = stream.TopRows(n_keep, len(info.features), info.id_kind)
    cols = [info.id_col, *info.features]
    for rb in table.select(cols).combine_chunks().to_batches():
        if rb.num_rows == 0:
            continue
        batch = poolio.pool_batch(rb, info)
        keep = leave_out(batch.ids)
        if keep is not None and len(keep) == 0:
            continue
        top.add(batch, keep, score(batch))
    kept = top.result()
    schema = pa.schema([table.schema.field(c).remove_metadata() for c in cols])
    rows = kept.rows.select(cols).cast(schema) if kept.rows is not None else schema.empty_table()
    rows = rows.append_column(SCORE_COL, pa.array(kept.scores, pa.float64())).append_column(SEEN_COL, pa.array(np.zeros(len(kept.ids), np.int64)))
    seen = pa.table({**{c: pa.nulls(1, schema.field(c).type) for c in cols}, SCORE_COL: pa.nulls(1, pa.float64()),
                     SEEN_COL: pa.array([table.num_rows], pa.int64())})
    return pa.concat_tables([rows, seen])


def reduce(parts: Iterable[pa.Table], info: poolio.PoolInfo, n_keep: int, on_rows: Callable[[int], None] | None = None) -> stream.Kept:
    """The ``n_keep`` best rows of the union of ``partition_top`` results: what one stream over the pool keeps."""
    top = stream.TopRows(n_keep, len(info.features), info.id_kind)
    cols = [info.id_col, *info.features]
    for part in parts:
        seen = part.column(SEEN_COL)
        if on_rows is not None:
            on_rows(int(pc.sum(seen).as_py() or 0))
        rows = part.filter(pc.is_valid(part.column(SCORE_COL)))
        if rows.num_rows == 0:
            continue
        batch = poolio.pool_batch(rows.select(cols).combine_chunks().to_batches()[0], info)
        top.add(batch, None, rows.column(SCORE_COL).to_numpy())
    return top.result()


# --- on Ray ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What every actor needs: the pool, a picklable recipe of the round, the strategy that runs, k, the rows to leave out."""

    info: poolio.PoolInfo
    make_round: Callable  # () -> Round, with the trained model rebuilt from arrays (commands.query.RoundRecipe)
    strategy: str
    k: int
    exclude: np.ndarray


class Scorer:
    """The map_batches callable class: the round and its scorer are built (and jitted) once per actor."""

    def __init__(self, job: Job) -> None:
        from alloop import strategies

        self.job = job
        self.score, self.n_keep = strategies.get(job.strategy).keep(job.make_round(), job.k)
        self.leave_out = stream.excluder(job.exclude)

    def __call__(self, table: pa.Table) -> pa.Table:
        _maybe_die()
        return partition_top(table, self.job.info, self.score, self.n_keep, self.leave_out)


def _maybe_die() -> None:
    """Fault injection for the tests: the first actor to claim the file named by $ALLOOP_TEST_KILL_WORKER dies at once."""
    arm = os.environ.get(KILL_ENV)
    if not arm:
        return
    try:
        os.rename(arm, arm + ".fired")  # atomic: exactly one claimant
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class RayEngine:
    """``strategies.select``'s engine: the keep step over the pool on Ray, returning what ``stream.stream_top`` would."""

    make_round: Callable
    address: str | None = None
    workers: int | None = None  # concurrent scoring actors (None: 1 per 4 CPUs of the cluster, at least 1)
    rows_per_call: int = ROWS_PER_CALL

    def __call__(self, info: poolio.PoolInfo, ran, k: int, n_keep: int, exclude: np.ndarray,
                 on_rows: Callable[[int], None] | None = None) -> stream.Kept:
        with cluster(self.address) as ray:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failure comes back as an exception: one line, from us
            job = Job(info, self.make_round, ran.name, k, np.asarray(exclude))
            res = ray.cluster_resources()
            cpus, gpus = res.get("CPU", 1), res.get("GPU", 0)
            workers = self.workers or max(1, int(cpus) // 4)
            # one CPU each, but never all of a small cluster's: Ray Data's read tasks need one left, or nothing is read
            per_actor = min(1.0, (cpus - 1) / workers) if cpus > 1 else cpus / (workers + 1)
            ds = ray.data.read_parquet(list(info.files), filesystem=info.filesystem, partitioning=None)
            ds = ds.select_columns([info.id_col, *info.features])
            out = ds.map_batches(Scorer, fn_constructor_kwargs={"job": job}, batch_format="pyarrow", batch_size=self.rows_per_call,
                                 concurrency=workers, num_cpus=per_actor, num_gpus=min(1.0, gpus / workers) if gpus else 0)
            try:
                with warnings.catch_warnings():  # Ray Data's advice for large pipelines (e.g. fewer blocks than actors on a small pool)
                    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")
                    return reduce(out.iter_batches(batch_format="pyarrow", batch_size=None), info, n_keep, on_rows)
            except Exception as e:  # noqa: BLE001 - a user's mistake found by an actor comes back wrapped
                user = _user_error(e)
                if user is not None:
                    raise user from None
                if isinstance(e, ray.exceptions.RayError):
                    raise UserError(f"the Ray query failed ({_first_line(e)}); the run is unchanged: retry, or use --engine local") from None
                raise


_USER_ERROR = re.compile(r"alloop\.errors\.UserError: (.+)")


def _user_error(e: BaseException | None, depth: int = 0) -> UserError | None:
    """The UserError an actor raised, through Ray's wrappers: the exception itself (cause, __cause__, __context__),
    else its line in the remote traceback that Ray Data's UserCodeException carries as text."""
    if e is None or depth > 8:
        return None
    if isinstance(e, UserError):
        return UserError(str(e))
    for nxt in (getattr(e, "cause", None), e.__cause__, e.__context__):
        found = _user_error(nxt, depth + 1) if isinstance(nxt, BaseException) else None
        if found is not None:
            return found
    m = _USER_ERROR.search(str(e)) if depth == 0 else None
    return UserError(m.group(1).strip()) if m else None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
