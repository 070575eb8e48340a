"""The strategies users pick from every day: the SLD batch (the regression default), top-k SLD, the
uncertainty measures (margin is the classification default), query by committee, greedy and random.

- ``sld``: a batch drawn ∝ min(SLD, q90) · D² (SLD-weighted k-means++, ``core.diversity``) over a
  uniform sample of up to SLD_CANDIDATES unlabeled rows, SLD being the squared loss derivative along
  the regularity tangent (method.md eq. 67);
- ``sld-topk``: the k highest SLD scores over the whole pool (the paper's heuristic as stated);
- ``committee``: predictive variance across bootstrap models (classification: their mean KL from the
  consensus);
- ``greedy``: farthest-point sampling in standardized inputs (GSx) over the rows farthest from the
  labeled set; also the cold-start fallback of every model strategy;
- ``random``: uniform, from a hash of (seed, id) so that no pool batching changes it;
- ``entropy``, ``margin``, ``least-confident``: uncertainty of the predicted class distribution.
"""

from __future__ import annotations

import numpy as np

from alloop.core import diversity, ranking, scorers
from alloop.strategies import stream
from alloop.strategies.base import Needs, Pick, Round, Strategy, deterministic, top_k

# sld (and the research strategies) draw from a uniform sample of this many unlabeled rows
SLD_CANDIDATES = 20000
GREEDY_CANDIDATES = 4096  # greedy keeps the rows farthest from the labeled set, at least this many
CLIP_QUANTILE = diversity.CLIP_QUANTILE


def random_score(rnd: Round):
    """Uniform [0, 1) per row from a hash of (seed, id): the same for any batching or partition of
    the pool."""
    return lambda b: scorers.random_scores(rnd.seed, b.ids)


def uniform_sample(rnd: Round, k: int):
    """Keep a uniform sample of up to max(SLD_CANDIDATES, 4k) unlabeled rows (all of a smaller
    pool)."""
    return random_score(rnd), max(SLD_CANDIDATES, 4 * k)


def model_score(fn, rnd: Round):
    """A jitted x -> scores function as a pool-batch scorer (fixed shapes, split over the round's
    devices)."""
    return stream.device_scorer(fn, rnd.batch_rows, rnd.devices)


def labeled_z(rnd: Round, d: int) -> np.ndarray:
    return rnd.z(rnd.labeled_x) if len(rnd.labeled_x) else np.zeros((0, d))


# --- random and greedy ----------------------------------------------------------------------------


def greedy_keep(rnd: Round, k: int):
    """Rows by distance to the nearest labeled row (a uniform sample while nothing is labeled)."""
    score = (
        model_score(scorers.min_distance(rnd.stats, rnd.labeled_x), rnd)
        if len(rnd.labeled_x)
        else random_score(rnd)
    )
    return score, max(GREEDY_CANDIDATES, 4 * k)


def greedy_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Farthest-point order over the kept rows; each pick's score is its distance to the nearest
    labeled or earlier pick."""
    z = rnd.z(kept.x)
    d0 = kept.scores if len(rnd.labeled_x) else np.full(len(kept.ids), np.inf)
    order = ranking.farthest_point(z, d0, k)
    return deterministic(order, pick_distances(z, d0, order))


def pick_distances(z: np.ndarray, d0: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each pick's distance to the nearest labeled or previously picked row (inf for a first
    pick)."""
    out = []
    for j, i in enumerate(order):
        prev = np.linalg.norm(z[order[:j]] - z[i], axis=1).min() if j else np.inf
        out.append(min(d0[i], prev))
    return np.asarray(out, np.float64)


# --- SLD ------------------------------------------------------------------------------------------


def sld_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """kpp-clip over the kept rows (``core.diversity``); the batch is the draw, listed by SLD,
    highest first."""
    sld = rnd.model.on_rows(rnd.model.sld(), kept.x, rnd.devices)
    z = rnd.z(kept.x)
    drawn, probs = diversity.kpp_clip(
        z, sld, labeled_z(rnd, z.shape[1]), k, np.random.default_rng(rnd.seed)
    )
    order = np.lexsort((kept.ids[drawn], -sld[drawn]))
    return Pick(drawn[order], sld[drawn][order], probs[order])


def uncertainty(kind: str) -> Strategy:
    about = {
        "entropy": "entropy of the predicted class distribution",
        "margin": (
            "minus the gap between the two most probable classes (the classification default)"
        ),
        "least-confident": "one minus the top class probability",
    }[kind]
    return Strategy(
        kind,
        about,
        keep=lambda rnd, k: (model_score(rnd.model.uncertainty(kind), rnd), k),
        tasks=("classification",),
        needs=Needs.MODEL,
    )


COMMITTEE_SIZE = 5

SLD = Strategy(
    "sld",
    f"rows drawn ∝ min(SLD, its {CLIP_QUANTILE:.0%} quantile) · D² (SLD-weighted k-means++) over "
    f"a uniform sample of up to {SLD_CANDIDATES:,} unlabeled rows: the regression default",
    keep=uniform_sample,
    pick=sld_pick,
    needs=Needs.MODEL | Needs.TANGENT,
)
SLD_TOPK = Strategy(
    "sld-topk",
    "the k highest SLD scores over the whole pool (the paper's heuristic)",
    keep=lambda rnd, k: (model_score(rnd.model.sld(), rnd), k),
    needs=Needs.MODEL | Needs.TANGENT,
)


def uniform_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """The k kept rows of a random score (a uniform draw without replacement), flagged as uniform
    draws."""
    return top_k(kept, rnd, k)._replace(uniform=np.ones(min(k, len(kept.ids)), bool))


RANDOM = Strategy(
    "random",
    "uniform over the unlabeled rows",
    keep=lambda rnd, k: (random_score(rnd), k),
    pick=uniform_pick,
)
GREEDY = Strategy(
    "greedy",
    "GSx: farthest point from the labeled rows in standardized inputs",
    keep=greedy_keep,
    pick=greedy_pick,
)
COMMITTEE = Strategy(
    "committee",
    f"QBC: disagreement of {COMMITTEE_SIZE} bootstrap models (variance; mean KL for classifiers)",
    keep=lambda rnd, k: (model_score(rnd.model.committee(), rnd), k),
    needs=Needs.MODEL | Needs.MEMBERS,
)

ALL = (
    SLD,
    SLD_TOPK,
    RANDOM,
    COMMITTEE,
    GREEDY,
    uncertainty("entropy"),
    uncertainty("margin"),
    uncertainty("least-confident"),
)
