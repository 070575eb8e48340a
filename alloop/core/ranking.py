"""Ranking rows by score: a streaming top-k merge and greedy farthest-point order (pure numpy)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TopK(NamedTuple):
    """The k best rows seen so far: scores, ids and their feature rows, best first."""

    scores: np.ndarray
    ids: np.ndarray
    x: np.ndarray


def topk_empty(k: int, n_features: int, id_dtype) -> TopK:
    return TopK(
        np.zeros((0,), np.float64), np.zeros((0,), id_dtype), np.zeros((0, n_features), np.float32)
    )


def _order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Best first: higher score, ties broken by smaller id (so the result is independent of
    batching)."""
    return np.lexsort((ids, -scores))


def topk_merge(state: TopK, scores, ids, x, k: int) -> TopK:
    """Merge a batch into the running top-k. NaN scores rank last."""
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, np.float64))
    if len(scores) > k:  # cheap pre-filter of the batch before the exact merge
        keep = np.argpartition(-scores, k - 1)[:k]
        cut = scores[keep].min()
        keep = np.flatnonzero(scores >= cut)
        scores, ids, x = scores[keep], ids[keep], x[keep]
    all_s = np.concatenate([state.scores, scores])
    all_i = np.concatenate([state.ids, ids])
    all_x = np.concatenate([state.x, x])
    top = _order(all_s, all_i)[:k]
    return TopK(all_s[top], all_i[top], all_x[top])


def topk_index(state: TopK, scores, ids, k: int) -> np.ndarray:
    """Where the k best of ``state`` and a batch come from: j >= 0 is batch row j, j < 0 is state
    row -1 - j.

    The same rows in the same order as ``topk_merge``, without gathering anything, so the caller can
    carry other per-row data along. Once the state is full, batch rows below its k-th score (which
    cannot enter) are dropped with one comparison before the exact merge.
    """
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, np.float64))
    idx = np.arange(len(scores))
    if len(state.scores) >= k and len(scores):
        idx = np.flatnonzero(scores >= state.scores[k - 1])
    if len(idx) > k:
        cut = scores[idx[np.argpartition(-scores[idx], k - 1)[:k]]].min()
        idx = idx[scores[idx] >= cut]
    all_s = np.concatenate([state.scores, scores[idx]])
    all_i = np.concatenate([state.ids, ids[idx]])
    top = _order(all_s, all_i)[:k]
    return np.concatenate([-1 - np.arange(len(state.scores)), idx])[top]


def farthest_point(z: np.ndarray, d0: np.ndarray, k: int) -> np.ndarray:
    """Greedy farthest-point order: repeatedly take the row farthest from everything chosen so far.

    ``z`` are candidate rows (standardized), ``d0`` their distance to rows already labeled (+inf
    when none: then the first pick is the candidate nearest the candidates' mean, as in GSx).
    """
    k = min(k, len(z))
    d = np.asarray(d0, np.float64).copy()
    chosen: list[int] = []
    if k and not np.isfinite(d).any():
        first = int(np.argmin(np.linalg.norm(z - z.mean(axis=0), axis=1)))
        chosen.append(first)
        d = np.linalg.norm(z - z[first], axis=1)
    while len(chosen) < k:
        d[chosen] = -np.inf
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(z - z[i], axis=1))
    return np.array(chosen, dtype=np.int64)
