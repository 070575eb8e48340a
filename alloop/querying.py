"""Choosing the rows to label: stream the pool once, score every unlabeled row, keep the best.

Memory is bounded by one pool batch plus the kept candidates, never by the pool. Strategies:

- ``sld`` (the regression default): a batch drawn ∝ min(SLD, q90) · D² (SLD-weighted k-means++, core/batch.py)
  over a uniform sample of up to SLD_CANDIDATES unlabeled rows, SLD being the squared loss derivative
  along the regularity tangent (the method);
- ``sld-topk``: the k highest SLD scores over the whole pool;
- ``random``: uniform, from a hash of (seed, id);
- ``committee``: predictive variance across bootstrap models (classification: their mean KL divergence
  from the consensus);
- ``greedy``: farthest-point sampling in standardized feature space (GSx), over a candidate buffer of
  the rows farthest from the labeled set;
- ``entropy``, ``margin`` (the classification default), ``least-confident`` (classification only):
  uncertainty of the predicted class distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from alloop import streaming
from alloop.core import parallel, scorers, selection
from alloop.core.batch import kpp_clip
from alloop.core.models import Standardizer
from alloop.errors import UserError
from alloop.io import pool as poolio

STRATEGIES = ("sld", "sld-topk", "random", "committee", "greedy", "entropy", "margin", "least-confident")
CLASSIFICATION_STRATEGIES = ("sld", "sld-topk", "random", "committee", "greedy", "entropy", "margin", "least-confident")
DEFAULT_STRATEGY = {"regression": "sld", "classification": "margin"}  # measured: README "Does SLD save labels?"
SLD_CANDIDATES = 20000  # sld draws its batch from a uniform sample of this many unlabeled rows
CLASSIFICATION_ONLY = ("entropy", "margin", "least-confident")  # every other strategy not listed above is regression only
UNCERTAINTY = {"entropy": scorers.entropy, "margin": scorers.margin, "least-confident": scorers.least_confident}
GREEDY_CANDIDATES = 4096


@dataclass
class Selection:
    ids: np.ndarray
    scores: np.ndarray
    strategy: str  # what actually ran (sld falls back to greedy at cold start)
    note: str | None = None
    rows: object = None  # the picks' pool columns as stored (Arrow table, pick order), so the pool is not read again
    kept: streaming.Kept | None = None  # what the picks were chosen from (the top-k, or greedy's candidates): query shards store it


def picked(top: streaming.Kept, strategy: str) -> Selection:
    """The Selection of a top-k strategy: the kept rows themselves."""
    return Selection(top.ids, top.scores, strategy, rows=top.rows, kept=top)


def default_strategy(task: str) -> str:
    """What a query uses unless told: the SLD batch for regression; margin for classification, where it beat
    random on all three bundled datasets and the SLD batch on one (docs/results.md, bench_classification_al.py)."""
    return DEFAULT_STRATEGY.get(task, "sld")


def check_strategy(strategy: str, task: str) -> None:
    """UserError when ``strategy`` does not apply to a run of ``task`` (or does not exist)."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy not in strategies_for(task):
        other = "regression" if task == "classification" else "classification"
        raise UserError(f"--strategy {strategy} is for {other} runs and this is a {task} run: choose one of {', '.join(strategies_for(task))}")


def strategies_for(task: str) -> list[str]:
    """The strategies that apply to a run of ``task``, in STRATEGIES order."""
    if task == "classification":
        return [s for s in STRATEGIES if s in CLASSIFICATION_STRATEGIES]
    return [s for s in STRATEGIES if s not in CLASSIFICATION_ONLY]


def _id_dtype(info: poolio.PoolInfo):
    return np.int64 if info.id_kind == "int" else object


def stream_top(
    info: poolio.PoolInfo,
    score_batch: Callable[[poolio.PoolBatch], np.ndarray],
    exclude: np.ndarray,
    k: int,
    batch_rows: int,
    on_rows: Callable[[int], None] | None = None,
) -> streaming.Kept:
    """The k best-scoring rows of the pool whose ids are not in ``exclude`` (pipelined: see streaming.py)."""
    return streaming.stream_top(info, score_batch, exclude, k, batch_rows, on_rows)


def model_scorer(fn: Callable, batch_rows: int, devices: int = 1) -> Callable[[poolio.PoolBatch], object]:
    """Wrap a jitted x -> scores function for pool batches: fixed batch shapes, rows split over ``devices``.

    Returns the device arrays without waiting for them, so the next batch is read while this one is scored.
    """
    return streaming.device_scorer(fn, batch_rows, devices)


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
    devices: int = 1,
) -> Selection:
    """GSx: farthest-point picks among the candidates farthest from the labeled rows.

    With no labels yet, the candidates are a uniform sample (random hash) of the pool.
    """
    if len(labeled_x):
        score = model_scorer(scorers.min_distance(stats, labeled_x), batch_rows, devices)
    else:
        score = random_scorer(seed)
    top = stream_top(info, score, exclude, greedy_candidates(k), batch_rows, on_rows)
    return greedy_pick(top, stats, len(labeled_x) > 0, k)


def sld_diverse_select(
    info: poolio.PoolInfo,
    fn: Callable,
    stats: Standardizer,
    labeled_x: np.ndarray,
    exclude: np.ndarray,
    k: int,
    seed: int,
    batch_rows: int,
    on_rows=None,
    devices: int = 1,
) -> Selection:
    """The default ``sld``: SLD-weighted k-means++ seeding with the score capped (core/batch.py).

    Candidates are a uniform sample (random hash) of up to SLD_CANDIDATES unlabeled rows, all of them
    for smaller pools; SLD is computed on those, then k rows are drawn ∝ min(SLD, q90) · D².
    """
    top = stream_top(info, random_scorer(seed), exclude, max(SLD_CANDIDATES, 4 * k), batch_rows, on_rows)
    return sld_diverse_pick(top, fn, stats, labeled_x, k, seed, batch_rows, devices)


def sld_diverse_pick(
    top: streaming.Kept, fn: Callable, stats: Standardizer, labeled_x: np.ndarray, k: int, seed: int, batch_rows: int, devices: int = 1,
) -> Selection:
    """kpp-clip over kept candidates; the picks are listed by their SLD, highest first.

    The candidates are scored in equal calls of at most the streaming scorer's size (a wide MLP's
    activations stay small), split over ``devices``.
    """
    rows = parallel.even_chunk(len(top.x), min(batch_rows, streaming.SCORE_ROWS), devices)
    sld = parallel.score_rows(fn, top.x, rows, devices).astype(np.float64)
    scale = lambda x: (np.asarray(x, np.float64) - np.asarray(stats.mean)) / np.asarray(stats.scale)  # noqa: E731
    z_lab = scale(labeled_x) if len(labeled_x) else np.zeros((0, top.x.shape[1]))
    drawn, _ = kpp_clip(scale(top.x), sld, z_lab, k, np.random.default_rng(seed))
    order = drawn[np.lexsort((top.ids[drawn], -sld[drawn]))]  # the batch is the draw; the file lists it by SLD
    rows = None if top.rows is None else top.rows.take(order)
    return Selection(top.ids[order], sld[order], "sld", rows=rows, kept=top)


def greedy_candidates(k: int) -> int:
    """How many rows greedy keeps while streaming (its candidate buffer)."""
    return max(GREEDY_CANDIDATES, 4 * k)


def greedy_pick(top: streaming.Kept, stats: Standardizer, labeled: bool, k: int) -> Selection:
    """Farthest-point order over the candidates (``labeled``: their scores are distances to labeled rows)."""
    z = (top.x - np.asarray(stats.mean)) / np.asarray(stats.scale)
    d0 = top.scores if labeled else np.full(len(top.ids), np.inf)
    order = selection.farthest_point(z, d0, k)
    rows = None if top.rows is None else top.rows.take(order)
    return Selection(top.ids[order], _pick_distances(z, d0, order), "greedy", rows=rows, kept=top)


def _pick_distances(z: np.ndarray, d0: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each pick's distance to the nearest labeled or previously picked row (inf for a first pick)."""
    out = []
    for j, i in enumerate(order):
        prev = np.linalg.norm(z[order[:j]] - z[i], axis=1).min() if j else np.inf
        out.append(min(d0[i], prev))
    return np.asarray(out, np.float64)
