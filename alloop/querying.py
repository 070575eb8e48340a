"""Choosing the rows to label: stream the pool once, score every unlabeled row, keep the best.

Memory is bounded by one pool batch plus the kept candidates, never by the pool. Strategies:

- ``sld``: the squared loss derivative along the regularity tangent (the method), top-k;
- ``random``: uniform, from a hash of (seed, id);
- ``committee``: predictive variance across bootstrap models;
- ``greedy``: farthest-point sampling in standardized feature space (GSx), over a candidate buffer of
  the rows farthest from the labeled set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from alloop.core import scorers, selection
from alloop.core.models import Standardizer
from alloop.io import pool as poolio

STRATEGIES = ("sld", "random", "committee", "greedy")
GREEDY_CANDIDATES = 4096


@dataclass
class Selection:
    ids: np.ndarray
    scores: np.ndarray
    strategy: str  # what actually ran (sld falls back to greedy at cold start)
    note: str | None = None


def _id_dtype(info: poolio.PoolInfo):
    return np.int64 if info.id_kind == "int" else object


def stream_top(
    info: poolio.PoolInfo,
    score_batch: Callable[[poolio.PoolBatch], np.ndarray],
    exclude: np.ndarray,
    k: int,
    batch_rows: int,
    on_rows: Callable[[int], None] | None = None,
) -> selection.TopK:
    """The k best-scoring rows of the pool whose ids are not in ``exclude``."""
    top = selection.topk_empty(k, len(info.features), _id_dtype(info))
    for batch in poolio.iter_batches(info, batch_rows=batch_rows):
        keep = ~np.isin(batch.ids, exclude) if len(exclude) else np.ones(len(batch.ids), bool)
        if keep.any():
            ids, x = batch.ids[keep], batch.X[keep]
            top = selection.topk_merge(top, np.asarray(score_batch(poolio.PoolBatch(ids, x)), np.float64), ids, x, k)
        if on_rows is not None:
            on_rows(len(batch.ids))
    return top


def model_scorer(fn: Callable, batch_rows: int) -> Callable[[poolio.PoolBatch], np.ndarray]:
    """Wrap a jitted x -> scores function for pool batches, with fixed batch shapes."""
    return lambda b: scorers.pad_apply(fn, b.X, batch_rows)


def random_scorer(seed: int) -> Callable[[poolio.PoolBatch], np.ndarray]:
    return lambda b: scorers.random_scores(seed, b.ids)


def greedy_select(
    info: poolio.PoolInfo,
    stats: Standardizer,
    labeled_x: np.ndarray,
    exclude: np.ndarray,
    k: int,
    seed: int,
    batch_rows: int,
    on_rows=None,
) -> Selection:
    """GSx: farthest-point picks among the candidates farthest from the labeled rows.

    With no labels yet, the candidates are a uniform sample (random hash) of the pool.
    """
    n_cand = max(GREEDY_CANDIDATES, 4 * k)
    if len(labeled_x):
        dist = scorers.min_distance(stats, labeled_x)
        score = model_scorer(dist, batch_rows)
    else:
        score = random_scorer(seed)
    top = stream_top(info, score, exclude, n_cand, batch_rows, on_rows)
    z = (top.x - np.asarray(stats.mean)) / np.asarray(stats.scale)
    d0 = top.scores if len(labeled_x) else np.full(len(top.ids), np.inf)
    order = selection.farthest_point(z, d0, k)
    return Selection(top.ids[order], _pick_distances(z, d0, order), "greedy")


def _pick_distances(z: np.ndarray, d0: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each pick's distance to the nearest labeled or previously picked row (inf for a first pick)."""
    out = []
    for j, i in enumerate(order):
        prev = np.linalg.norm(z[order[:j]] - z[i], axis=1).min() if j else np.inf
        out.append(min(d0[i], prev))
    return np.asarray(out, np.float64)
