"""Batch query strategies for the simulation: the SLD variants and the regression baselines (pure numpy).

A strategy sees one round through a ``PoolView`` (the trained model's outputs and tangent outputs on
every pool row, the gradient features a(x) = ∂F/∂θ and (AᵀWA + sD)⁻¹) and returns a ``Pick``: the
pool rows it chose, in order, with the probability each had when drawn (NaN for deterministic picks;
importance weighting needs them).

SLD of a row is 4σ²u(x)² with u(x) = J_F(x)θ̇ = a(x)ᵀθ̇ (method.md, 57–58); σ² is common to all rows,
so rankings and sampling probabilities use u² alone.

Labeling row j with the model's own prediction as its label leaves θ* where it is (its residual is
zero) and changes the Hessian by a_j a_jᵀ, so the exact new tangent is a rank-one update
(Sherman–Morrison): with g = H⁻¹a_j and c = 1 + a_jᵀg,

    θ̇' = θ̇ − g (a_jᵀθ̇) / c,       u'(x) = u(x) − (a(x)ᵀg) u_j / c,       H'⁻¹ = H⁻¹ − g gᵀ / c.

``sld-seq`` uses it to discount rows that resemble those already chosen in a batch; ``sld-lookahead``
also uses it to score each row by how much labeling it would lower the pool's total SLD.

Batch diversity without a model of the batch: ``sld-kpp`` draws rows one at a time with probability
∝ SLD · D², D the distance to the labeled and already drawn rows (k-means++ seeding weighted by SLD, as
BADGE does with gradient norms); ``sld-kpp-clip`` caps SLD first. Which variant ``sld`` means, and the
measurements behind the choice, are in docs/results.md.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from alloop.core import batch, selection
from alloop.core.batch import sq_distances

COMMITTEE_SIZE = 5
POWER_BETA = 0.5  # Kirsch et al. (2023) power acquisition: draw rows with probability ∝ SLD^β
CLIP_QUANTILE = batch.CLIP_QUANTILE  # sld-kpp-clip caps SLD at this quantile of the unlabeled rows' SLD


class PoolView(NamedTuple):
    """One round as a strategy sees it. Indices are pool rows; ``labeled`` rows are never picked."""

    a: np.ndarray  # (n, p) gradient features ∂F/∂θ of every pool row
    z: np.ndarray  # (n, d) standardized inputs
    labeled: np.ndarray  # (m,) labeled rows
    y: np.ndarray  # (m,) their labels
    pred: np.ndarray  # (n,) model outputs F(x)
    u: np.ndarray  # (n,) tangent outputs J_F(x) θ̇
    hinv: np.ndarray  # (p, p) (AᵀWA + sD)⁻¹ in a's coordinates
    members: Callable[[int, np.random.Generator], np.ndarray]  # k -> (k, n) bootstrap predictions
    density: Callable[[], np.ndarray]  # () -> (n,) representativeness of each row


class Pick(NamedTuple):
    idx: np.ndarray  # chosen rows, in the order chosen
    prob: np.ndarray  # probability of each when it was drawn; NaN when chosen deterministically


class Strategy(NamedTuple):
    name: str
    select: Callable[[PoolView, int, np.random.Generator], Pick]
    weighted: bool  # fit with importance weights (LURE) computed from the picks' probabilities
    about: str


def candidates(view: PoolView) -> np.ndarray:
    """Rows not yet labeled, in pool order."""
    mask = np.ones(len(view.pred), bool)
    mask[view.labeled] = False
    return np.flatnonzero(mask)


def _deterministic(idx) -> Pick:
    idx = np.asarray(idx, np.int64)
    return Pick(idx, np.full(len(idx), np.nan))


def top_k(scores: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the highest scores, best first; ties go to the earlier row."""
    s = np.where(np.isfinite(scores[cand]), scores[cand], -np.inf)
    return cand[np.lexsort((cand, -s))[:k]]


# --- baselines --------------------------------------------------------------------------------


def random_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    cand = candidates(view)
    k = min(k, len(cand))
    idx = rng.choice(cand, size=k, replace=False)
    return Pick(idx.astype(np.int64), 1.0 / (len(cand) - np.arange(k)))


def greedy_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """GSx (Yu & Kim 2010; Wu et al. 2019): farthest point from the labeled rows in standardized inputs."""
    del rng
    cand = candidates(view)
    d0 = np.sqrt(sq_distances(view.z[cand], view.z[view.labeled]).min(axis=1)) if len(view.labeled) else np.full(len(cand), np.inf)
    return _deterministic(cand[selection.farthest_point(view.z[cand], d0, k)])


def igs_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """iGS (Wu, Lin & Huang 2019): maximize min over labeled m of ||x − x_m|| · |F(x) − y_m|.

    Within a batch a chosen row joins the labeled ones with its prediction as its label.
    """
    del rng
    cand = candidates(view)
    zc, fc = view.z[cand], view.pred[cand]
    dist = np.sqrt(sq_distances(zc, view.z[view.labeled]))
    score = np.min(dist * np.abs(fc[:, None] - view.y[None, :]), axis=1)
    chosen: list[int] = []
    for _ in range(min(k, len(cand))):
        score[chosen] = -np.inf
        j = int(np.argmax(score))
        chosen.append(j)
        dj = np.sqrt(sq_distances(zc, zc[j : j + 1])[:, 0])
        score = np.minimum(score, dj * np.abs(fc - fc[j]))
    return _deterministic(cand[chosen])


def committee_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """Query by committee: the variance of bootstrap models' predictions, top-k."""
    cand = candidates(view)
    preds = view.members(COMMITTEE_SIZE, rng)
    return _deterministic(top_k(np.var(preds, axis=0), cand, k))


def emcm_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """EMCM (Cai, Zhang & Zhou 2013): expected gradient length, mean_k |F(x) − F_k(x)| · ||∂F/∂θ||, top-k."""
    cand = candidates(view)
    preds = view.members(COMMITTEE_SIZE, rng)
    change = np.mean(np.abs(preds - view.pred[None, :]), axis=0) * np.linalg.norm(view.a, axis=1)
    return _deterministic(top_k(change, cand, k))


# --- SLD ---------------------------------------------------------------------------------------


def sld_topk_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """The k rows of highest SLD."""
    del rng
    return _deterministic(top_k(view.u**2, candidates(view), k))


def _rank_one(view_a: np.ndarray, hinv: np.ndarray, u: np.ndarray, j: int):
    """Tangent outputs and H⁻¹ after labeling row j with its own prediction (module docstring)."""
    g = hinv @ view_a[j]
    c = 1.0 + view_a[j] @ g
    return u - (view_a @ g) * (u[j] / c), hinv - np.outer(g, g) / c


def sld_seq_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """Highest SLD one row at a time, each chosen row fantasized as labeled (rank-one tangent update)."""
    del rng
    cand = candidates(view)
    u, hinv, chosen = view.u.copy(), view.hinv, []
    for _ in range(min(k, len(cand))):
        j = int(top_k(u**2, np.setdiff1d(cand, chosen, assume_unique=True), 1)[0])
        chosen.append(j)
        u, hinv = _rank_one(view.a, hinv, u, j)
    return _deterministic(chosen)


def lookahead_gain(a: np.ndarray, hinv: np.ndarray, u: np.ndarray, over: np.ndarray) -> np.ndarray:
    """For every row x: Σ_{x' ∈ over} u(x')² minus the same sum after labeling x with its prediction.

    With g = H⁻¹a(x), c = 1 + a(x)ᵀg, t = u(x)/c:  gain = 2t (A_overᵀ u_over)ᵀg − t² gᵀ(A_overᵀA_over)g.
    """
    ao = a[over]
    v, m = ao.T @ u[over], ao.T @ ao
    g = a @ hinv
    t = u / (1.0 + np.sum(g * a, axis=1))
    return 2.0 * t * (g @ v) - t**2 * np.sum((g @ m) * g, axis=1)


def sld_lookahead_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """The row whose labeling would lower the unlabeled pool's total SLD the most, one at a time."""
    del rng
    cand = candidates(view)
    u, hinv, chosen = view.u.copy(), view.hinv, []
    for _ in range(min(k, len(cand))):
        rest = np.setdiff1d(cand, chosen, assume_unique=True)
        j = int(top_k(lookahead_gain(view.a, hinv, u, rest), rest, 1)[0])
        chosen.append(j)
        u, hinv = _rank_one(view.a, hinv, u, j)
    return _deterministic(chosen)


def power_sample(weights: np.ndarray, cand: np.ndarray, k: int, rng: np.random.Generator) -> Pick:
    """Draw k candidates without replacement with probability ∝ weights (Gumbel top-k).

    Returns each pick's probability at the moment it was drawn, p_j / (1 − Σ earlier p).
    """
    w = np.maximum(np.nan_to_num(weights[cand], nan=0.0, posinf=0.0), 0.0)
    if not np.any(w > 0):
        w = np.ones(len(cand))
    k = min(k, len(cand))
    with np.errstate(divide="ignore"):
        keys = np.log(w) + rng.gumbel(size=len(cand))
    order = np.argsort(-keys, kind="stable")[:k]
    p = w / w.sum()
    taken = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    return Pick(cand[order].astype(np.int64), p[order] / np.maximum(1.0 - taken, 1e-300))


def sld_power_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """Stochastic acquisition: rows drawn with probability ∝ SLD^β (β = POWER_BETA)."""
    return power_sample(np.abs(view.u) ** (2 * POWER_BETA), candidates(view), k, rng)


def sld_density_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """Information density (Settles & Craven 2008): SLD times the row's representativeness, top-k."""
    del rng
    return _deterministic(top_k(view.u**2 * view.density(), candidates(view), k))


def kpp_sample(view: PoolView, weights: np.ndarray, k: int, rng: np.random.Generator) -> Pick:
    """k-means++ seeding over the candidates (core/batch.py): rows drawn ∝ weight · D², D the distance to the
    labeled and already chosen rows, each with the probability it had given the earlier picks."""
    cand = candidates(view)
    drawn, probs = batch.kpp(view.z[cand], weights[cand], view.z[view.labeled], k, rng)
    return Pick(cand[drawn].astype(np.int64), probs)


def sld_kpp_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """SLD-weighted k-means++ seeding in standardized inputs: rows drawn ∝ SLD · D²."""
    return kpp_sample(view, view.u**2, k, rng)


def sld_kpp_clip_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """sld-kpp with SLD capped at its CLIP_QUANTILE over the unlabeled rows: an outlier guard.

    SLD grows with a row's leverage (u = a(x)ᵀθ̇ is linear in the features), so its largest values sit
    on extreme rows. Capped, SLD still steers draws away from rows the model is sure about, but among
    the top rows only D², the distance to what is already labeled, tells them apart.
    """
    sld = view.u**2
    cap = np.quantile(sld[candidates(view)], CLIP_QUANTILE)
    return kpp_sample(view, np.minimum(sld, cap), k, rng)


def kpp_pick(view: PoolView, k: int, rng: np.random.Generator) -> Pick:
    """k-means++ seeding in standardized inputs (D² sampling): sld-kpp without SLD, for comparison."""
    return kpp_sample(view, np.ones(len(view.u)), k, rng)


# --- importance weights ------------------------------------------------------------------------


def lure_weights(probs: np.ndarray, n_pool: int) -> np.ndarray:
    """LURE weights (Farquhar, Gal & Rainforth 2021) for rows acquired in order with probabilities ``probs``.

    v_m = 1 + (N − M)/(N − m) · (1 / ((N − m + 1) q_m) − 1): unbiased risk under pool-based sampling
    without replacement. A uniform draw has weight 1; rows with NaN probability (chosen
    deterministically) get weight 1.
    """
    q = np.asarray(probs, np.float64)
    big_m, n = len(q), float(n_pool)
    m = np.arange(1, big_m + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(m < n, (n - big_m) / (n - m), 0.0)
        v = 1.0 + ratio * (1.0 / ((n - m + 1.0) * q) - 1.0)
    return np.where(np.isfinite(v), v, 1.0)


def rbf_density(z: np.ndarray, rng: np.random.Generator, anchors: int = 1000) -> np.ndarray:
    """Mean RBF similarity of each row to a random sample of rows (bandwidth: their median distance)."""
    idx = rng.choice(len(z), size=min(anchors, len(z)), replace=False)
    d2 = np.concatenate([sq_distances(z[i : i + 4096], z[idx]) for i in range(0, len(z), 4096)])
    h2 = float(np.median(sq_distances(z[idx], z[idx])))
    return np.mean(np.exp(-d2 / (2.0 * max(h2, 1e-12))), axis=1)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("random", random_pick, False, "uniform over the unlabeled rows"),
        Strategy("greedy", greedy_pick, False, "GSx: farthest point from the labeled rows in standardized inputs"),
        Strategy("igs", igs_pick, False, "iGS (Wu 2019): farthest in inputs times outputs"),
        Strategy("committee", committee_pick, False, f"QBC: variance over {COMMITTEE_SIZE} bootstrap models"),
        Strategy("emcm", emcm_pick, False, f"EMCM (Cai 2013): expected model change over {COMMITTEE_SIZE} bootstrap models"),
        Strategy("sld-topk", sld_topk_pick, False, "SLD, the k highest"),
        Strategy("sld-seq", sld_seq_pick, False, "SLD, one at a time, discounting rows like those chosen (rank-one)"),
        Strategy("sld-lookahead", sld_lookahead_pick, False, "largest drop of the pool's total SLD, one at a time"),
        Strategy("sld-power", sld_power_pick, False, f"rows drawn with probability ∝ SLD^{POWER_BETA}"),
        Strategy("sld-power-iw", sld_power_pick, True, "sld-power, fitted with LURE importance weights"),
        Strategy("sld-density", sld_density_pick, False, "SLD times representativeness (RBF density), top-k"),
        Strategy("sld-kpp", sld_kpp_pick, False, "rows drawn ∝ SLD · D² (SLD-weighted k-means++ seeding, standardized inputs)"),
        Strategy("sld-kpp-clip", sld_kpp_clip_pick, False, f"sld-kpp with SLD capped at its {CLIP_QUANTILE:.0%} quantile (outlier guard)"),
        Strategy("kpp", kpp_pick, False, "rows drawn ∝ D² (k-means++ seeding): sld-kpp without SLD"),
    )
}
