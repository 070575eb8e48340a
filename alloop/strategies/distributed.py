"""Scoring the pool on a Ray cluster (``alloop query --engine ray``), reduced exactly to what the
local stream keeps.

Every strategy keeps the ``n`` best rows of the pool by a per-row score (``Strategy.keep``: a
model's score, or for the batch strategies a seeded hash of the id, a uniform sample any partition
can compute), then picks among them on one machine. So the pool can be split anywhere: each part
keeps its own best ``n`` rows (``partition_top``), and the best ``n`` of their union (``reduce``)
are the rows one stream over the whole pool keeps, by the same order (score descending, NaN last,
then id ascending), whatever the parts, their order or their sizes. The pick then runs on the driver
exactly as in a local query.

With Ray: a pool of actors (``Scorer``, Ray core) each builds the round (model, scorer) once per
query from a recipe the driver ships (no run directory is needed on the workers), then runs the
local engine's own stream (``stream.stream_top``: the same reader, batches and scorer) over one pool
file per call, local or in object storage; the driver hands out the files (two queued per actor) and
merges what comes back. An actor that dies is restarted and its files retried by Ray; the reduction
does not depend on which actor scored what, so the result is the same. Ray Data is not used: on a
small cluster its per-query start (a listing task, read tasks, its executor) took seconds more than
reading and scoring the pool.

Starting an actor (a process, its imports of JAX and alloop, the scorer's compilation) is a fixed
cost of every query. With ``keep_s`` (``query --keep-workers``, on a running cluster) the actors are
named and detached, keyed by ``actor_key`` (alloop's version and source, the model, task, targets
and features), and the next query of that key runs on them: each query still ships its whole round,
so a kept actor holds no state a query depends on beyond code (in the key) and JAX's compiled
programs (keyed by JAX). They leave after ``keep_s`` seconds without a query, or at ``alloop
release-workers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import alloop
from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.io.ray_cluster import NAMESPACE, PREFIX, cluster
from alloop.strategies import stream

SCORE_COL = "__alloop_score__"  # a kept row's score (NaN scores already ranked as -inf)
SEEN_COL = "__alloop_seen__"  # rows a part held, on one extra row of nulls (progress)
# files queued per actor: the next one is there when a file is done, so no actor waits for the
# driver
QUEUED = 2
RESTARTS = 4  # times Ray restarts a dead actor (and retries its files) before the query fails
# tests: path of a file whose first claimant (an actor) kills itself with SIGKILL
KILL_ENV = "ALLOOP_TEST_KILL_WORKER"


# --- the exact reduction (no Ray needed) ----------------------------------------------------------


def partition_top(
    table: pa.Table, info: poolio.PoolInfo, score: Callable, n_keep: int, leave_out: Callable
) -> pa.Table:
    """The ``n_keep`` best rows of one part of the pool as a table: its columns as stored, the
    score, and one extra row of nulls whose SEEN_COL counts the part's rows."""
    top = stream.TopRows(n_keep, len(info.features), info.id_kind)
    for rb in table.select([info.id_col, *info.features]).combine_chunks().to_batches():
        if rb.num_rows == 0:
            continue
        batch = poolio.pool_batch(rb, info)
        keep = leave_out(batch.ids)
        if keep is not None and len(keep) == 0:
            continue
        top.add(batch, keep, score(batch))
    return kept_table(top.result(), table.num_rows, info, table.schema)


def kept_table(kept: stream.Kept, seen: int, info: poolio.PoolInfo, stored: pa.Schema) -> pa.Table:
    """``kept`` (a part's best rows) as ``partition_top`` returns them: the columns as ``stored``,
    the score, and the row of nulls whose SEEN_COL says how many rows the part held."""
    cols = [info.id_col, *info.features]
    schema = pa.schema([stored.field(c).remove_metadata() for c in cols])
    rows = kept.rows.select(cols).cast(schema) if kept.rows is not None else schema.empty_table()
    rows = rows.append_column(SCORE_COL, pa.array(kept.scores, pa.float64())).append_column(
        SEEN_COL, pa.array(np.zeros(len(kept.ids), np.int64))
    )
    last = pa.table(
        {
            **{c: pa.nulls(1, schema.field(c).type) for c in cols},
            SCORE_COL: pa.nulls(1, pa.float64()),
            SEEN_COL: pa.array([seen], pa.int64()),
        }
    )
    return pa.concat_tables([rows, last])


def reduce(
    parts: Iterable[pa.Table],
    info: poolio.PoolInfo,
    n_keep: int,
    on_rows: Callable[[int], None] | None = None,
) -> stream.Kept:
    """The ``n_keep`` best rows of the union of ``partition_top`` results: what one stream over the
    pool keeps."""
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


# --- on Ray ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What every actor needs: the pool, a picklable recipe of the round, the strategy that runs, k,
    the rows to leave out."""

    info: poolio.PoolInfo
    # () -> Round, with the trained model rebuilt from arrays (commands.query.RoundRecipe)
    make_round: Callable
    strategy: str
    k: int
    exclude: np.ndarray


class Scorer:
    """The Ray actor. Its start imports JAX and alloop once; each query's round and scorer are built
    at the actor's first file of that query (JAX compiles the scorer at its first batch, or loads it
    from the compilation cache), then used for every file of the query. A kept actor
    (``--keep-workers``) serves later queries without starting again."""

    def __init__(self, idle_s: float = 0.0) -> None:
        import ray

        from alloop import strategies  # noqa: F401 - JAX and alloop's scorers, imported before the first file
        from alloop.core import compile_cache

        compile_cache.enable()  # the scorer compiled once per machine, not once per actor

        self.token, self.queries, self.last, self.busy = None, 0, time.monotonic(), False
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        if idle_s > 0:
            threading.Thread(target=self._leave_when_idle, args=(idle_s,), daemon=True).start()

    def top(self, files: tuple[str, ...], token: str, job_box: list) -> pa.Table:
        """The best rows of ``files`` by the local engine's stream (same reader, batches, scorer and
        leave-out), as ``partition_top`` returns them. ``token`` names the query; its Job (in
        ``job_box``, fetched only when the token is new) builds the round."""
        _maybe_die()
        # never idle while serving: a file longer than idle_s must not make the actor leave
        # mid-query
        self.busy = True
        try:
            return self._top(files, token, job_box)
        finally:
            self.last, self.busy = time.monotonic(), False

    def _top(self, files: tuple[str, ...], token: str, job_box: list) -> pa.Table:
        if token != self.token:
            import ray

            from alloop import strategies

            job = ray.get(job_box[0])
            rnd = job.make_round()
            self.job, self.batch_rows = job, rnd.batch_rows
            self.score, self.n_keep = strategies.get(job.strategy).keep(rnd, job.k)
            self.token, self.queries = token, self.queries + 1
        seen: list[int] = []
        kept = stream.stream_top(
            replace(self.job.info, files=files),
            self.score,
            self.job.exclude,
            self.n_keep,
            self.batch_rows,
            seen.append,
        )
        schema = (
            kept.rows.schema
            if kept.rows is not None
            else poolio.empty_rows(replace(self.job.info, files=files)).schema
        )
        return kept_table(kept, sum(seen), self.job.info, schema)

    def idle_for(self, idle_s: float) -> bool:
        """Whether this actor has served no file for more than ``idle_s`` seconds (never while it
        serves one)."""
        return not self.busy and time.monotonic() - self.last > idle_s

    def state(self) -> dict:
        """This actor's process, the queries it served, and whether Ray restarted it since the last
        time it was asked."""
        restarted, self.restarted = self.restarted, False
        return {"pid": os.getpid(), "queries": self.queries, "restarted": restarted}

    def _leave_when_idle(self, idle_s: float) -> None:
        import ray

        me = ray.get_runtime_context().current_actor
        while True:
            time.sleep(min(idle_s, 5.0))
            if self.idle_for(idle_s):
                ray.kill(
                    me, no_restart=True
                )  # a kept actor leaves the cluster after idle_s without a query
                return


def _maybe_die() -> None:
    """Fault injection for the tests: the first actor to claim the file named by
    $ALLOOP_TEST_KILL_WORKER dies at once; while that file holds "always", every actor dies at every
    file."""
    arm = os.environ.get(KILL_ENV)
    if not arm:
        return
    try:
        if Path(arm).read_text().strip() == "always":
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename(arm, arm + ".fired")  # atomic: exactly one claimant
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def scored(ray, actors: list, parts: list[tuple[str, ...]], token: str, job) -> Iterator[pa.Table]:
    """Each part's ``Scorer.top`` as it comes back; a finished actor gets the next part, with QUEUED
    parts per actor so none waits for the driver between files."""
    todo, running = list(reversed(parts)), {}

    def submit(actor) -> None:
        if todo:
            running[actor.top.remote(todo.pop(), token, [job])] = actor

    for _ in range(QUEUED):  # round by round: a pool of few files still reaches every actor
        for actor in actors:
            submit(actor)
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        submit(running.pop(done))
        yield ray.get(done)


@dataclass(frozen=True)
class RayEngine:
    """``strategies.select``'s engine: the keep step over the pool on Ray, returning what
    ``stream.stream_top`` would."""

    make_round: Callable
    address: str | None = None
    # concurrent scoring actors (None: 1 per 4 CPUs of the cluster, at least 1; never more than
    # files)
    workers: int | None = None
    # > 0: the actors stay on the cluster (named, detached) for later queries, until idle this long
    keep_s: float = 0.0
    on_note: Callable[[str], None] | None = (
        None  # one line for the user (an actor that Ray restarted)
    )

    def __call__(
        self,
        info: poolio.PoolInfo,
        ran,
        k: int,
        n_keep: int,
        exclude: np.ndarray,
        on_rows: Callable[[int], None] | None = None,
    ) -> stream.Kept:
        with cluster(self.address) as ray:
            parts = [(f,) for f in info.files]
            job = ray.put(Job(info, self.make_round, ran.name, k, np.asarray(exclude)))
            workers = min(len(parts), self.workers or _default_workers(ray))
            key = actor_key(self.make_round, info) if self.keep_s > 0 else None
            actors = start_actors(ray, workers, key, self.keep_s)
            try:
                kept = reduce(
                    scored(ray, actors, parts, uuid.uuid4().hex, job), info, n_keep, on_rows
                )
            except Exception as e:  # noqa: BLE001 - a user's mistake found by an actor comes back wrapped
                user = _user_error(e)
                if user is not None:
                    raise user from None
                if isinstance(e, ray.exceptions.RayActorError):
                    raise UserError(
                        f"a Ray scoring actor died and Ray's {RESTARTS} restarts did not help "
                        f"({_first_line(e)}); the run is unchanged: check the workers' memory "
                        "and logs (/tmp/ray/session_latest/logs on each node), retry, or use "
                        "--engine local"
                    ) from None
                if isinstance(e, ray.exceptions.RayError):
                    raise UserError(
                        f"the Ray query failed ({_first_line(e)}); the run is unchanged: "
                        "retry, or use --engine local"
                    ) from None
                raise
            else:
                self._note_restarts(ray, actors)
                return kept
            finally:
                if key is None:
                    for actor in actors:
                        ray.kill(actor, no_restart=True)

    def _note_restarts(self, ray, actors: list) -> None:
        """One line when Ray restarted an actor during the query (Ray's own notices of it are not
        shown: ray_cluster.cluster)."""
        try:
            restarted = sum(
                s["restarted"] for s in ray.get([a.state.remote() for a in actors], timeout=30)
            )
        except (ray.exceptions.RayError, TimeoutError):
            return
        if restarted and self.on_note is not None:
            self.on_note(
                f"{restarted} Ray scoring actor(s) died during the query and Ray restarted them; "
                "their files were scored again (the result does not depend on which actor "
                "scored what)"
            )


def _default_workers(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // 4)


def actor_key(make_round, info: poolio.PoolInfo) -> str:
    """What a kept actor may be reused for: this alloop (version and source), the model, task,
    targets and features. Each query still sends its round (parameters, labels, strategy); the key
    only keeps an actor built by other code, or warmed on another model, from being taken for this
    one."""
    config = getattr(make_round, "config", {}) or {}
    what = {
        "alloop": alloop.__version__,
        "code": code_fingerprint(),
        "task": getattr(make_round, "task", None),
        "features": list(info.features),
        **{k: config.get(k) for k in ("model", "targets", "regularizer", "tangent")},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_fingerprint() -> str:
    """A hash of alloop's Python sources, so a kept actor never outlives a change of the code."""
    global _CODE
    if _CODE is None:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parents[1]
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
        _CODE = h.hexdigest()[:16]
    return _CODE


_CODE: str | None = None


def start_actors(ray, workers: int, key: str | None = None, keep_s: float = 0.0) -> list:
    """``workers`` Scorer actors, spread over the cluster's nodes: one CPU each (a share where there
    are fewer CPUs than workers), one GPU each where the cluster has them; restarted by Ray when one
    dies. With a ``key``: the kept actors of that key (named, detached), started where missing."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 1), res.get("GPU", 0)
    opts = {
        "num_cpus": min(1.0, cpus / workers),
        "num_gpus": min(1.0, gpus / workers) if gpus else 0,
        "max_restarts": RESTARTS,
        "max_task_retries": RESTARTS,
        "scheduling_strategy": "SPREAD",
    }
    actor = ray.remote(Scorer)
    if key is None:
        return [actor.options(**opts).remote() for _ in range(workers)]
    return [
        actor.options(
            **opts,
            name=f"{PREFIX}{key}-{i}",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(keep_s)
        for i in range(workers)
    ]


_USER_ERROR = re.compile(r"alloop\.errors\.UserError: (.+)")


def _user_error(e: BaseException | None, depth: int = 0) -> UserError | None:
    """The UserError an actor raised, through Ray's wrappers: the exception itself (cause,
    __cause__, __context__), else its line in the remote traceback that Ray's error carries as
    text."""
    if e is None or depth > 8:
        return None
    cause = getattr(
        e, "cause", None
    )  # a RayTaskError is also an instance of the error it wraps, but its text is the traceback
    if isinstance(e, UserError) and not isinstance(cause, BaseException):
        return UserError(str(e))
    for nxt in (cause, e.__cause__, e.__context__):
        found = _user_error(nxt, depth + 1) if isinstance(nxt, BaseException) else None
        if found is not None:
            return found
    m = _USER_ERROR.search(str(e)) if depth == 0 else None
    return UserError(m.group(1).strip()) if m else None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
