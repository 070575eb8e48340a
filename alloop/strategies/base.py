"""One strategy type for ``alloop query`` and ``alloop simulate``, and the one function that runs
it.

A strategy chooses k rows in two steps, each a pure function of the round (modAL's and optax's
shape: small pieces with one signature, composed):

- ``keep(round, k) -> (score, n)``: a per-row score and how many of the best-scoring unlabeled rows
  to keep while the pool streams by (``stream.stream_top``; memory bounded by n, never by the pool);
- ``pick(kept, round, k) -> Pick``: the batch, chosen among the kept rows (None: the kept rows in
  order, i.e. top-k).

``select`` runs a strategy over a pool: the live query calls it on the run's pool (streamed here, or
kept on a Ray cluster by ``distributed.RayEngine``), and the simulation on its labeled pool. So the
simulation measures exactly the code that ``alloop query`` runs, candidate sample included.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from alloop.core.models import Standardizer
from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.strategies import stream
from alloop.strategies.model import TrainedModel

DEFAULT_BATCH_ROWS = 65536

RowScore = Callable[
    [poolio.PoolBatch], object
]  # a pool batch -> one score per row (numpy or device arrays)


class Round(NamedTuple):
    """What a strategy may use this round. Built by the live query from the run, by the simulation
    from its learner."""

    task: str
    stats: Standardizer  # the pool's input standardization
    labeled_x: np.ndarray  # (m, d) float32 features of the labeled rows
    labeled_y: np.ndarray  # (m, targets) labels as stored (float64 for regression)
    seed: int
    model: TrainedModel | None = None  # None before the first training (cold start)
    batch_rows: int = DEFAULT_BATCH_ROWS
    devices: int = 1
    labeled_uniform: np.ndarray | None = (
        None  # (m,) True where a labeled row was drawn uniformly from the pool; None: unknown
    )

    def z(self, x: np.ndarray) -> np.ndarray:
        """Standardized inputs in float64 (distances, k-means++)."""
        return (np.asarray(x, np.float64) - np.asarray(self.stats.mean, np.float64)) / np.asarray(
            self.stats.scale, np.float64
        )


class Pick(NamedTuple):
    """Rows chosen among the kept ones: their indices in ``kept`` (in order), the score written to
    the query file, the probability each had when drawn (NaN when chosen deterministically), and
    which were drawn uniformly from the unlabeled rows (None: none were)."""

    idx: np.ndarray
    scores: np.ndarray
    prob: np.ndarray
    uniform: np.ndarray | None = None


def deterministic(idx, scores) -> Pick:
    idx = np.asarray(idx, np.int64)
    return Pick(idx, np.asarray(scores, np.float64), np.full(len(idx), np.nan))


class Needs(enum.Flag):
    """What a strategy needs from the round (a misspelled need is an AttributeError, not a
    no-op)."""

    NOTHING = 0
    MODEL = enum.auto()  # a trained model
    TANGENT = enum.auto()  # a finite, non-zero θ̇
    MEMBERS = enum.auto()  # bootstrap models (query by committee)
    GRADIENTS = enum.auto()  # per-row ∂F/∂θ of one regression output


@dataclass(frozen=True, eq=False)
class Strategy:
    """A way of choosing rows, and what it ``needs`` of the round (``Needs``)."""

    name: str
    about: str
    keep: Callable[[Round, int], tuple[RowScore, int]]
    pick: Callable[[stream.Kept, Round, int], Pick] | None = None
    tasks: tuple[str, ...] = ("regression", "classification")
    needs: Needs = Needs.NOTHING
    weighted: bool = (
        False  # refit with LURE importance weights from the picks' probabilities (simulation only)
    )


@dataclass
class Selection:
    ids: np.ndarray
    scores: np.ndarray
    strategy: str  # what actually ran (a model strategy falls back to greedy at cold start)
    note: str | None = None
    # the picks' pool columns as stored (Arrow table, pick order), so the pool is not read again
    rows: object = None
    kept: stream.Kept | None = None  # what the picks were chosen from
    prob: np.ndarray | None = None
    uniform: np.ndarray | None = (
        None  # (k,) True where the pick was a uniform draw (a mixed batch's share)
    )


def top_k(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """The kept rows in order: the k best scores."""
    n = min(k, len(kept.ids))
    return deterministic(np.arange(n), kept.scores[:n])


def select(
    strategy: Strategy,
    info: poolio.PoolInfo,
    rnd: Round,
    exclude: np.ndarray,
    k: int,
    fallback: Strategy,
    on_rows: Callable[[int], None] | None = None,
    engine=None,
) -> Selection:
    """Run ``strategy`` over the pool's rows not in ``exclude``; ``fallback`` (greedy) when it
    cannot run yet.

    ``engine``: None streams the pool here (``stream.stream_top``); else a callable
    ``(info, ran, k, n_keep, exclude, on_rows) -> Kept`` that keeps the same rows elsewhere
    (``distributed.RayEngine``).
    """
    outputs = np.shape(rnd.labeled_y)[1] if np.ndim(rnd.labeled_y) == 2 else 1
    if Needs.GRADIENTS in strategy.needs and outputs != 1:
        raise UserError(
            f"strategy {strategy.name!r} works on the gradients of one regression target and this "
            f"run has {outputs}: choose another strategy (herding, sld, random)"
        )
    note = cold_start_note(strategy, rnd)
    ran = fallback if note else strategy
    score, n_keep = ran.keep(rnd, k)
    if engine is None:
        kept = stream.stream_top(info, score, exclude, n_keep, rnd.batch_rows, on_rows)
    else:
        kept = engine(info, ran, k, n_keep, exclude, on_rows)
    pick = (ran.pick or top_k)(kept, rnd, k)
    rows = None if kept.rows is None else kept.rows.take(pick.idx)
    return Selection(
        kept.ids[pick.idx], pick.scores, ran.name, note, rows, kept, pick.prob, pick.uniform
    )


def cold_start_note(strategy: Strategy, rnd: Round) -> str | None:
    """Why ``strategy`` has nothing to say this round (then greedy sampling runs), or None."""
    fallback = "using greedy farthest-point sampling"
    is_sld = Needs.TANGENT in strategy.needs
    if Needs.MODEL not in strategy.needs:
        return None
    if rnd.model is None:
        why, what = (
            ("cold start: no trained tangent yet", "SLD")
            if is_sld
            else ("cold start: no trained model yet", strategy.name)
        )
        return f"{why}, so {what} has nothing to say; {fallback}"
    if is_sld:
        health = rnd.model.tangent_health()
        if health != "ok":
            why = (
                "cold start: no trained tangent yet"
                if health == "zero"
                else "the trained tangent is not finite (training diverged)"
            )
            return f"{why}, so SLD has nothing to say; {fallback}"
    return None
