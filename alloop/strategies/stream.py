"""The streaming top-k over the pool, pipelined: read ahead, score on the device, merge on the host.

Three things overlap. A reader thread reads, decodes and converts the next batches and finds the
rows to leave out (labeled or outstanding); the device scores batch i (JAX dispatch returns at
once); the host merges batch i-1's scores into the running top-k. Along with each kept row's score,
id and float32 features go its columns as stored in the pool (an Arrow table of at most k rows), so
the query file is written without reading the pool a second time.

Memory: the reader's queue (``depth`` batches), the batch being scored, the one being merged, and
the k kept rows with a buffer of max(k, BUFFER_ROWS) rows that may enter them; never the pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
import pyarrow as pa

from alloop.core import parallel, ranking
from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.io.prefetch import prefetch

PREFETCH_DEPTH = 2
# rows per scorer call: a wide MLP's activations stay small, and it is no slower than 64k on CPU
SCORE_ROWS = 16384
BUFFER_ROWS = (
    8192  # rows that may enter the top-k, gathered before they are merged into it (at least k)
)


class Kept(NamedTuple):
    """The best rows so far, best first: scores, ids, float32 features, and the rows as stored (or
    None)."""

    scores: np.ndarray
    ids: np.ndarray
    x: np.ndarray
    rows: pa.Table | None = None


def empty(n_features: int, id_kind: str) -> Kept:
    top = ranking.topk_empty(0, n_features, np.int64 if id_kind == "int" else object)
    return Kept(top.scores, top.ids, top.x, None)


def excluder(exclude: np.ndarray) -> Callable[[np.ndarray], np.ndarray | None]:
    """ids -> indices of the ids not in ``exclude``, or None when none is excluded (the common
    case).

    Integer ids: one binary search per row in the sorted exclusions; string ids: a hash lookup.
    """
    exclude = np.asarray(exclude)
    if len(exclude) == 0:
        return lambda ids: None
    if exclude.dtype.kind in "iu":
        ex = np.unique(exclude.astype(np.int64))

        def hits(ids):
            if len(ids) == 0 or ids.max() < ex[0] or ids.min() > ex[-1]:
                return None
            return ex[np.searchsorted(ex, ids).clip(max=len(ex) - 1)] == ids
    else:
        index = pd.Index(pd.unique(exclude.astype(object)))

        def hits(ids):
            return index.get_indexer(ids) >= 0

    def keep(ids: np.ndarray) -> np.ndarray | None:
        hit = hits(ids)
        return None if hit is None or not hit.any() else np.flatnonzero(~hit)

    return keep


def device_scorer(
    fn: Callable, batch_rows: int, devices: int = 1
) -> Callable[[poolio.PoolBatch], list]:
    """A pool-batch scorer from a jitted x -> scores function: fixed-shape chunks of at most
    SCORE_ROWS rows (the last one padded), each split over ``devices``, dispatched without waiting
    for the results.

    Its ``warm_up(n_features)`` compiles the function on one chunk of zeros (stream_top runs it
    while the first batches are read).
    """
    chunk = min(batch_rows, SCORE_ROWS)
    place = parallel.placer(chunk, devices)

    def score(b: poolio.PoolBatch) -> list:
        return [fn(place(b.X[i : i + chunk])) for i in range(0, len(b.X), chunk)]

    score.warm_up = lambda d: np.asarray(fn(place(np.zeros((1, d), np.float32))))
    return score


def host_scores(scores, m: int) -> np.ndarray:
    """The first ``m`` scores as float64 numpy: a list of chunk results is joined (this waits for
    the device)."""
    if isinstance(scores, list):
        scores = (
            np.concatenate([np.asarray(a).reshape(-1) for a in scores]) if scores else np.zeros(0)
        )
    return np.asarray(np.asarray(scores)[:m], np.float64)


class TopRows:
    """The running top-k of a stream, with the rows that may enter it buffered between merges.

    Each batch costs one comparison with the current k-th score and a copy of the few rows that pass
    (at most the batch's own k best) into a buffer; the O(k) merge (sort, gathers) runs only when
    the buffer is full, so a large k (a diversity strategy's candidate buffer) costs per batch about
    what a small one does. The result is the same as merging every batch at once.

    Storage for the kept and the buffered rows (scores, ids, float32 features, stored columns as
    numpy) is allocated once, at the first rows: small arrays allocated mid-stream and kept alive
    across batches pin the allocator's heap between the large per-batch buffers, and the process
    grew by ~20-200 MB per million rows streamed until nothing long-lived was allocated after the
    start.
    """

    def __init__(self, k: int, n_features: int, id_kind: str) -> None:
        self.k, self.cap = k, max(k, BUFFER_ROWS)
        self.d, self.id_dtype = n_features, np.int64 if id_kind == "int" else object
        self.n = self.b = 0  # kept rows at [0, n) (best first), buffered ones at [k, k + b)
        self.store: dict | None = (
            None  # "s", "i", "x" and ("col", name) for the stored columns, k + cap rows each
        )
        self.schema: pa.Schema | None = None
        self.with_rows = True

    def add(self, batch: poolio.PoolBatch, keep: np.ndarray | None, scores) -> None:
        """Buffer the rows of ``batch`` (``keep``: the ones to consider, None for all) that can
        enter."""
        s = host_scores(scores, len(batch.ids))
        s = np.where(np.isnan(s), -np.inf, s)
        rows = np.arange(len(s)) if keep is None else keep
        if self.n >= self.k:
            rows = rows[
                s[rows] >= self.store["s"][self.k - 1]
            ]  # >=: a tie with a smaller id can still enter
        if len(rows) > self.k:
            cut = np.partition(s[rows], len(rows) - self.k)[
                len(rows) - self.k
            ]  # the batch's own k-th best
            rows = rows[s[rows] >= cut]
            if len(rows) > self.k:  # ties at the cut: smaller ids first, as in the full sort
                rows = rows[np.lexsort((batch.ids[rows], -s[rows]))[: self.k]]
        if not len(rows):
            return
        cols = None
        if batch.table is None:
            self.with_rows = False
        elif self.with_rows:
            cols = _numpy_rows(batch.table, rows)
            self.schema = self.schema or batch.table.schema
        if self.store is None:
            self._allocate(cols)
        if self.b + len(rows) > self.cap:
            self.flush()
        at = slice(self.k + self.b, self.k + self.b + len(rows))
        self.store["s"][at], self.store["i"][at], self.store["x"][at] = (
            s[rows],
            batch.ids[rows],
            batch.X[rows],
        )
        for name, v in (cols or {}).items():
            self.store[("col", name)][at] = v
        self.b += len(rows)
        if self.b >= self.cap or self.n < self.k:
            self.flush()

    def _allocate(self, cols: dict | None) -> None:
        m = self.k + self.cap
        self.store = {
            "s": np.empty(m, np.float64),
            "i": np.empty(m, self.id_dtype),
            "x": np.empty((m, self.d), np.float32),
        }
        # the pool's columns under ("col", name): a pool column named s, i or x is no clash with the
        # store's own arrays
        self.names = [("col", name) for name in cols or {}]
        self.store.update({("col", name): np.empty(m, v.dtype) for name, v in (cols or {}).items()})

    def flush(self) -> None:
        """Merge the buffered rows into the kept ones (same rows and order as one full sort)."""
        if not self.b:
            return
        st, k = self.store, self.k
        kept = ranking.TopK(st["s"][: self.n], st["i"][: self.n], None)
        src = ranking.topk_index(kept, st["s"][k : k + self.b], st["i"][k : k + self.b], k)
        at = np.where(src >= 0, k + src, -1 - src)  # storage rows, in the new order
        for key in ("s", "i", "x", *self.names):
            st[key][: len(at)] = st[key][at]  # fancy indexing copies first, so overlapping is fine
        self.n, self.b = len(at), 0

    def result(self) -> Kept:
        """The kept rows, best first, with their stored columns as an Arrow table (when every batch
        had them)."""
        self.flush()
        if self.store is None:
            return empty(self.d, "int" if self.id_dtype is np.int64 else "str")
        st, n = self.store, self.n
        rows = None
        if self.with_rows and self.schema is not None:
            rows = pa.Table.from_arrays(
                [pa.array(st[("col", f.name)][:n], type=f.type) for f in self.schema],
                schema=self.schema,
            )
        return Kept(st["s"][:n].copy(), st["i"][:n].copy(), st["x"][:n].copy(), rows)


def _numpy_rows(table: pa.RecordBatch, rows: np.ndarray) -> dict:
    """Columns of ``rows`` of ``table`` as numpy copies (ids and features: no nulls, so nothing is
    lost)."""
    taken = table.take(pa.array(rows, pa.int64()))
    return {
        name: np.array(col.to_numpy(zero_copy_only=False))
        for name, col in zip(taken.schema.names, taken.columns)
    }


def stream_top(
    info: poolio.PoolInfo,
    score_batch: Callable[[poolio.PoolBatch], object],
    exclude: np.ndarray,
    k: int,
    batch_rows: int,
    on_rows: Callable[[int], None] | None = None,
    depth: int = PREFETCH_DEPTH,
) -> Kept:
    """The k best-scoring rows of the pool (or of its slice ``info.rows``) whose ids are not in
    ``exclude``.

    ``score_batch`` gets every batch whole and returns its scores (numpy, or a device array that is
    only waited for when the next batch has been dispatched; entries past the batch's rows are
    padding). The result is the same as one full sort by (score desc, id asc), whatever the
    batching.
    """
    top = TopRows(k, len(info.features), info.id_kind)
    leave_out = excluder(exclude)

    def read():
        for b in poolio.iter_batches(info, batch_rows=batch_rows):
            yield b, leave_out(b.ids)

    pending, warming = None, _warm_up(score_batch, len(info.features))
    with prefetch(read, depth) as batches:
        for batch, keep in batches:
            if keep is not None and len(keep) == 0:  # every row left out: nothing to score
                _advance(on_rows, batch)
                continue
            if warming is not None:
                warming.join()
                warming = None
            scores = score_batch(batch)
            if pending is not None:
                top.add(*pending)
                _advance(on_rows, pending[0])
            pending = (batch, keep, scores)
        if pending is not None:
            top.add(*pending)
            _advance(on_rows, pending[0])
    return top.result()


def _warm_up(score_batch, n_features: int) -> threading.Thread | None:
    """Compile the scorer in a thread while the reader fills its queue; errors surface at the first
    real call."""
    warm = getattr(score_batch, "warm_up", None)
    if warm is None:
        return None

    def run():
        try:
            warm(n_features)
        except Exception:  # noqa: BLE001 - the first real call raises it properly
            pass

    t = threading.Thread(target=run, name="alloop-compile", daemon=True)
    t.start()
    return t


def _advance(on_rows, batch) -> None:
    if on_rows is not None:
        on_rows(len(batch.ids))


def check_devices(devices: int) -> None:
    """UserError unless ``devices`` is between 1 and the number of local devices."""
    have = parallel.device_count()
    if not 1 <= devices <= have:
        kind = jax.default_backend()
        raise UserError(
            f"--devices {devices}: this machine has {have} {kind} "
            f"device{'s' if have > 1 else ''}; pass --devices 1..{have}"
        )
