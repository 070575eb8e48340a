"""Research strategies, measured by ``alloop simulate`` (docs/results.md) and selectable in ``alloop
query``.

Each sees the kept rows (a uniform sample of up to SLD_CANDIDATES unlabeled rows, like ``sld``) and
the trained model: its outputs F(x), tangent outputs u(x) = J_F(x)θ̇, the gradient features a(x) =
∂F/∂θ and H⁻¹ = (AᵀA + sD)⁻¹ over the labeled rows (``model.TrainedModel``). Regression, one output.

SLD of a row is 4σ²u(x)² (method.md, 57–58); σ² is common to all rows, so rankings and sampling
probabilities use u² alone.

Labeling row j with the model's own prediction as its label leaves θ* where it is (its residual is
zero) and changes the Hessian by a_j a_jᵀ, so the exact new tangent is a rank-one update
(Sherman–Morrison): with g = H⁻¹a_j and c = 1 + a_jᵀg,

    θ̇' = θ̇ − g (a_jᵀθ̇) / c,       u'(x) = u(x) − (a(x)ᵀg) u_j / c,       H'⁻¹ = H⁻¹ − g gᵀ / c.

``sld-seq`` uses it to discount rows that resemble those already chosen in a batch;
``sld-lookahead`` also uses it to score each row by how much labeling it would lower the kept rows'
total SLD; ``vr`` by how much it would lower the pool-averaged predictive variance σ² tr(H⁻¹C), C =
mean a(x)a(x)ᵀ.

Batch diversity without a model of the batch: ``sld-kpp`` draws rows one at a time with probability
∝ SLD · D², D the distance to the labeled and already drawn rows (k-means++ seeding weighted by SLD,
as BADGE does with gradient norms); ``sld`` (builtin) caps SLD first.

Diversity in the model's own space (its gradient features a(x), sketched when wide): ``lcmd`` (the
largest cluster's most distant row, Holzmüller et al. 2023), ``sld-lcmd`` (the same, weighted by
capped SLD) and ``herding-grad``. For a linear model that space is the standardized inputs; for an
MLP it is where the fitted network is sensitive. ``sld-mix`` guards ``sld`` with a uniform share of
each batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alloop.core import diversity, share
from alloop.core.diversity import sq_distances
from alloop.strategies import stream
from alloop.strategies.base import Needs, Pick, Round, Strategy, deterministic
from alloop.strategies.builtin import labeled_z, sld_pick, uniform_sample

POWER_BETA = 0.5  # Kirsch et al. (2023) power acquisition: draw rows with probability ∝ SLD^β
# a(x) of the kept rows stays below this many floats (160 MB): fewer candidates for big models
MAX_FEATURE_FLOATS = 20_000_000
# vr: candidates × parameters² (its one product A·H⁻¹·C) stays below this (a few seconds on a CPU
# core)
VR_FLOPS = 4_000_000_000


class View(NamedTuple):
    """The kept rows as a research strategy sees them (standardized inputs, predictions, tangent
    outputs)."""

    z: np.ndarray  # (n, d) standardized inputs of the kept rows
    z_labeled: np.ndarray  # (m, d) standardized inputs of the labeled rows
    y_labeled: np.ndarray  # (m,) their labels
    pred: np.ndarray  # (n,) F(x) in the labels' units
    u: np.ndarray  # (n,) u(x) = J_F(x)θ̇


def view(kept: stream.Kept, rnd: Round) -> View:
    z = rnd.z(kept.x)
    _, u = rnd.model.outputs(kept.x)
    return View(
        z, labeled_z(rnd, z.shape[1]), labeled_targets(rnd)[:, 0], rnd.model.predict(kept.x), u
    )


def labeled_targets(rnd: Round) -> np.ndarray:
    """The labeled rows' targets as (m, targets) float64, however the round holds them."""
    return (
        np.asarray(rnd.labeled_y, np.float64).reshape(len(rnd.labeled_x), -1)
        if len(rnd.labeled_x)
        else np.zeros((0, 1))
    )


def sample_keep(rnd: Round, k: int):
    """A uniform sample like ``sld``'s, smaller when the model's gradient features would not fit in
    memory."""
    score, n = uniform_sample(rnd, k)
    return score, max(4 * k, min(n, MAX_FEATURE_FLOATS // max(rnd.model.n_params, 1)))


def in_order(idx) -> Pick:
    """A deterministic pick whose score is only its order (first chosen highest): herding's
    batches. Its gains are not monotone down the batch, and a query file lists rows by score."""
    return deterministic(idx, np.arange(len(idx), 0, -1, dtype=np.float64))


def top(scores: np.ndarray, k: int, ids: np.ndarray) -> np.ndarray:
    """The k highest scores, best first; ties go to the smaller id (as the streaming top-k)."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    return np.lexsort((ids, -s))[:k]


# --- baselines that need a model ------------------------------------------------------------------


def igs_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """iGS (Wu, Lin & Huang 2019): maximize min over labeled m of ||x − x_m|| · |F(x) − y_m|.

    Within a batch a chosen row joins the labeled ones with its prediction as its label.
    """
    v = view(kept, rnd)
    score = np.min(
        np.sqrt(sq_distances(v.z, v.z_labeled)) * np.abs(v.pred[:, None] - v.y_labeled[None, :]),
        axis=1,
    )
    chosen, at = [], []
    for _ in range(min(k, len(v.z))):
        score[chosen] = -np.inf
        j = int(np.argmax(score))
        chosen.append(j)
        at.append(score[j])
        score = np.minimum(
            score, np.sqrt(sq_distances(v.z, v.z[j : j + 1])[:, 0]) * np.abs(v.pred - v.pred[j])
        )
    return deterministic(chosen, at)


def emcm_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """EMCM (Cai, Zhang & Zhou 2013): expected gradient length, mean_k |F(x) − F_k(x)| · ||∂F/∂θ||,
    top-k."""
    m = rnd.model
    pred = m.predict(kept.x)
    preds = np.stack([m.predict(kept.x, params=p) for p in m.member_params()])
    change = np.mean(np.abs(preds - pred[None, :]), axis=0) * np.linalg.norm(
        m.gradient_features(kept.x), axis=1
    )
    idx = top(change, k, kept.ids)
    return deterministic(idx, change[idx])


# --- SLD variants ---------------------------------------------------------------------------------


def rank_one(a: np.ndarray, hinv: np.ndarray, u: np.ndarray, j: int):
    """Tangent outputs and H⁻¹ after labeling row j with its own prediction (module docstring)."""
    g = hinv @ a[j]
    c = 1.0 + a[j] @ g
    return u - (a @ g) * (u[j] / c), hinv - np.outer(g, g) / c


def _sequential(kept: stream.Kept, rnd: Round, k: int, gain) -> Pick:
    """Pick one row at a time by ``gain(a, hinv, u, rest)``, each fantasized as labeled (rank-one
    update)."""
    m = rnd.model
    a, hinv = m.gradient_features(kept.x), m.curvature_inverse(rnd.labeled_x)
    u = m.outputs(kept.x)[1]
    sld0, chosen = u**2, []
    rest = np.ones(len(u), bool)
    for _ in range(min(k, len(u))):
        idx = np.flatnonzero(rest)
        g = gain(a, hinv, u, idx)
        j = int(idx[top(g[idx], 1, kept.ids[idx])[0]])
        chosen.append(j)
        rest[j] = False
        u, hinv = rank_one(a, hinv, u, j)
    return deterministic(chosen, sld0[chosen])


def sld_seq_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Highest SLD one row at a time, each chosen row fantasized as labeled (rank-one tangent
    update)."""
    return _sequential(kept, rnd, k, lambda a, hinv, u, rest: u**2)


def lookahead_gain(a: np.ndarray, hinv: np.ndarray, u: np.ndarray, over: np.ndarray) -> np.ndarray:
    """For every row x: Σ_{x' ∈ over} u(x')² minus the same sum after labeling x with its
    prediction.

    With g = H⁻¹a(x), c = 1 + a(x)ᵀg, t = u(x)/c:
    gain = 2t (A_overᵀ u_over)ᵀg − t² gᵀ(A_overᵀA_over)g.
    """
    ao = a[over]
    v, m = ao.T @ u[over], ao.T @ ao
    g = a @ hinv
    t = u / (1.0 + np.sum(g * a, axis=1))
    return 2.0 * t * (g @ v) - t**2 * np.sum((g @ m) * g, axis=1)


def sld_lookahead_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """The row whose labeling would lower the kept rows' total SLD the most, one at a time."""
    return _sequential(kept, rnd, k, lookahead_gain)


def variance_gain(a: np.ndarray, hinv: np.ndarray, c: np.ndarray) -> np.ndarray:
    """For every row x: tr(H⁻¹C) minus the same after labeling x (any label: the variance does not
    see it).

    With g = H⁻¹a(x): H'⁻¹ = H⁻¹ − g gᵀ / (1 + a(x)ᵀg), so the drop is gᵀCg / (1 + a(x)ᵀg).
    """
    g = a @ hinv
    return np.sum((g @ c) * g, axis=1) / (1.0 + np.sum(g * a, axis=1))


def vr_keep(rnd: Round, k: int):
    """``sample_keep``, with fewer candidates when n·p² (its one A·H⁻¹·C) would pass VR_FLOPS (wide
    models)."""
    score, n = sample_keep(rnd, k)
    return score, max(4 * k, min(n, VR_FLOPS // max(rnd.model.n_params, 1) ** 2))


def vr_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Expected variance reduction over the pool (Cohn, Ghahramani & Jordan 1996; EMVR's criterion),
    exact for a model linear in θ: one row at a time, the one that lowers the kept rows' mean
    predictive variance the most, then H⁻¹ is updated as if it were labeled (rank-one). The kept
    rows are a uniform sample of the pool.

    ``variance_gain`` once, then per pick only rank-one updates: with G = AH⁻¹, the pick j (g = G_j,
    d its denominator) turns G into G − (Ag) gᵀ / d and GC into GC − (Ag)(Cg)ᵀ / d, O(np) instead of
    O(np²)."""
    m = rnd.model
    a, hinv = m.gradient_features(kept.x), m.curvature_inverse(rnd.labeled_x)
    c = a.T @ a / max(len(a), 1)
    g = a @ hinv
    gc = g @ c
    chosen, at = [], []
    for _ in range(min(k, len(a))):
        den = 1.0 + np.sum(g * a, axis=1)
        gain = np.sum(gc * g, axis=1) / den
        gain[chosen] = -np.inf
        j = int(top(gain, 1, kept.ids)[0])
        chosen.append(j)
        at.append(gain[j])
        gj, cgj, t = g[j].copy(), gc[j].copy(), a @ g[j]
        g -= np.outer(t, gj) / den[j]
        gc -= np.outer(t, cgj) / den[j]
    return deterministic(chosen, at)


def power_sample(
    weights: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw k rows without replacement with probability ∝ weights (Gumbel top-k).

    Returns (rows, each pick's probability at the moment it was drawn, p_j / (1 − Σ earlier p)).
    """
    w = np.maximum(np.nan_to_num(weights, nan=0.0, posinf=0.0), 0.0)
    if not np.any(w > 0):
        w = np.ones(len(w))
    k = min(k, len(w))
    with np.errstate(divide="ignore"):
        keys = np.log(w) + rng.gumbel(size=len(w))
    order = np.argsort(-keys, kind="stable")[:k]
    p = w / w.sum()
    taken = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    return order.astype(np.int64), p[order] / np.maximum(1.0 - taken, 1e-300)


def sld_power_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Stochastic acquisition: rows drawn with probability ∝ SLD^β (β = POWER_BETA)."""
    u = rnd.model.outputs(kept.x)[1]
    idx, prob = power_sample(np.abs(u) ** (2 * POWER_BETA), k, np.random.default_rng(rnd.seed))
    return Pick(idx, u[idx] ** 2, prob)


def rbf_density(z: np.ndarray, rng: np.random.Generator, anchors: int = 1000) -> np.ndarray:
    """Mean RBF similarity of each row to a random sample of rows (bandwidth: their median
    distance)."""
    idx = rng.choice(len(z), size=min(anchors, len(z)), replace=False)
    d2 = np.concatenate([sq_distances(z[i : i + 4096], z[idx]) for i in range(0, len(z), 4096)])
    h2 = float(np.median(sq_distances(z[idx], z[idx])))
    return np.mean(np.exp(-d2 / (2.0 * max(h2, 1e-12))), axis=1)


def sld_density_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Information density (Settles & Craven 2008): SLD times the row's representativeness among the
    kept rows, top-k."""
    u = rnd.model.outputs(kept.x)[1]
    score = u**2 * rbf_density(rnd.z(kept.x), np.random.default_rng(rnd.seed))
    idx = top(score, k, kept.ids)
    return deterministic(idx, score[idx])


def kpp_pick_with(weights_of):
    """k-means++ seeding over the kept rows: drawn ∝ weight · D², D the distance to the labeled and
    drawn rows."""

    def pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
        z = rnd.z(kept.x)
        w = weights_of(kept, rnd)
        drawn, probs = diversity.kpp(
            z, w, labeled_z(rnd, z.shape[1]), k, np.random.default_rng(rnd.seed)
        )
        return Pick(drawn, w[drawn], probs)

    return pick


def herding_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Kernel herding over the kept rows (standardized inputs): the batch that brings the labeled
    sample closest to the pool."""
    z = rnd.z(kept.x)
    idx = diversity.herding(z, labeled_z(rnd, z.shape[1]), k, np.random.default_rng(rnd.seed))
    return in_order(idx)


def sld_herding_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Kernel herding toward the pool tilted by SLD: half the target mass uniform, half ∝ SLD capped
    at its 90% quantile."""
    z = rnd.z(kept.x)
    sld = capped_sld(kept, rnd)
    w = 0.5 / max(len(sld), 1) + (
        0.5 * sld / sld.sum() if sld.sum() > 0 else 0.5 / max(len(sld), 1)
    )
    idx = diversity.herding(
        z, labeled_z(rnd, z.shape[1]), k, np.random.default_rng(rnd.seed), weights=w
    )
    return in_order(idx)


# --- diversity in the model's own space -----------------------------------------------------------

# gradient features wider than this are sketched (a Gaussian random projection keeps distances)
SKETCH_DIMS = 256


def model_space(kept: stream.Kept, rnd: Round) -> tuple[np.ndarray, np.ndarray]:
    """The kept and the labeled rows in the model's own space: its gradient features a(x) = ∂F/∂θ,
    sketched to SKETCH_DIMS when wider (as LCMD and BADGE do). For a model linear in θ this is its
    design row (standardized inputs for ``linear``); for an MLP, where the fitted network is
    sensitive."""
    m = rnd.model
    p = m.n_params
    proj = (
        np.random.default_rng([rnd.seed, 7]).normal(size=(p, SKETCH_DIMS)) / np.sqrt(SKETCH_DIMS)
        if p > SKETCH_DIMS
        else None
    )
    rows = max(
        1, MAX_FEATURE_FLOATS // p
    )  # the labeled rows can be many: a(x) is built and sketched a block at a time

    def embed(x: np.ndarray) -> np.ndarray:
        blocks = [m.gradient_features(x[i : i + rows]) for i in range(0, len(x), rows)]
        blocks = blocks if proj is None else [b @ proj for b in blocks]
        return (
            np.concatenate(blocks) if blocks else np.zeros((0, p if proj is None else SKETCH_DIMS))
        )

    return embed(kept.x), embed(np.asarray(rnd.labeled_x, np.float32).reshape(-1, kept.x.shape[1]))


def capped_sld(kept: stream.Kept, rnd: Round) -> np.ndarray:
    """SLD of the kept rows, capped at its CLIP_QUANTILE quantile as ``sld`` does (outliers do not
    dominate)."""
    return np.maximum(
        diversity.capped(rnd.model.on_rows(rnd.model.sld(), kept.x, rnd.devices)), 0.0
    )


def lcmd_pick_with(weights_of):
    """LCMD (``core.diversity.lcmd``) over the kept rows in the model's gradient space, rows
    weighted by ``weights_of``."""

    def pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
        e, e_lab = model_space(kept, rnd)
        idx, at = diversity.lcmd(e, e_lab, k, None if weights_of is None else weights_of(kept, rnd))
        return deterministic(idx, at)

    return pick


def herding_grad_pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
    """Kernel herding (``herding``) in the model's gradient space instead of the inputs."""
    e, e_lab = model_space(kept, rnd)
    idx = diversity.herding(e, e_lab, k, np.random.default_rng(rnd.seed))
    return in_order(idx)


# --- a uniform share: the guard against losing to random ------------------------------------------

MIX_SHARE = 0.3  # of each batch drawn uniformly from the unlabeled rows


def mix_pick_with(base, share=MIX_SHARE):
    """A share of the batch uniform over the unlabeled pool, the rest by ``base`` among the other
    kept rows.

    ``share``: a fraction, or a function of the round giving one (``labeled_share``); round(share·k)
    rows, at least one while the share is positive. The kept rows are a uniform sample in hash order
    (``uniform_sample``), so their first rows are a uniform draw from the unlabeled pool, whatever
    the pool's batching. ``base`` then sees those rows as labeled (its distances and herding count
    them), so the two parts do not crowd each other. A uniform row has the probability of a uniform
    draw: weight 1 under LURE (NaN here, as deterministic picks).
    """

    def pick(kept: stream.Kept, rnd: Round, k: int) -> Pick:
        frac = share(rnd) if callable(share) else share
        u = min(max(int(round(frac * k)), int(frac > 0)), len(kept.ids), k)
        rest = stream.Kept(kept.scores[u:], kept.ids[u:], kept.x[u:])
        y = labeled_targets(rnd)
        seen = rnd._replace(
            labeled_x=np.concatenate(
                [np.asarray(rnd.labeled_x, np.float32).reshape(-1, kept.x.shape[1]), kept.x[:u]]
            ),
            labeled_y=np.concatenate([y, np.full((u, y.shape[1]), np.nan)]),
        )
        chosen = base(rest, seen, k - u) if k > u else deterministic([], [])
        return Pick(
            np.r_[np.arange(u), u + chosen.idx].astype(np.int64),
            np.r_[np.full(u, np.nan), chosen.scores],
            np.r_[np.full(u, np.nan), chosen.prob],
            np.r_[np.ones(u, bool), np.zeros(len(chosen.idx), bool)],
        )

    return pick


def labeled_share(rnd: Round) -> float:
    """The uniform share the labels support (``core.share``): SHARE_PRIOR while the round does not
    know which of its labeled rows were uniform draws."""
    return labeled_evidence(rnd).share


def labeled_evidence(rnd: Round) -> share.ShareEvidence:
    if rnd.labeled_uniform is None or len(rnd.labeled_uniform) != len(rnd.labeled_x):
        return share.ShareEvidence(share.SHARE_PRIOR, float("nan"), 0, len(rnd.labeled_x))
    return share.choose_share(
        rnd.z(rnd.labeled_x),
        labeled_targets(rnd)[:, 0],
        rnd.labeled_uniform,
        np.random.default_rng(rnd.seed),
    )


# --- importance weights ---------------------------------------------------------------------------


def lure_weights(probs: np.ndarray, n_pool: int) -> np.ndarray:
    """LURE weights (Farquhar, Gal & Rainforth 2021) for rows acquired in order with probabilities
    ``probs``.

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


REGRESSION = ("regression",)
SLD_NEEDS = Needs.MODEL | Needs.TANGENT | Needs.GRADIENTS


def _research(name, about, pick, needs=SLD_NEEDS, keep=sample_keep, weighted=False) -> Strategy:
    return Strategy(
        name, about, keep=keep, pick=pick, tasks=REGRESSION, needs=needs, weighted=weighted
    )


ALL = (
    _research(
        "igs",
        "iGS (Wu 2019): farthest in inputs times outputs",
        igs_pick,
        needs=Needs.MODEL | Needs.GRADIENTS,
    ),
    _research(
        "emcm",
        "EMCM (Cai 2013): expected model change over bootstrap models",
        emcm_pick,
        needs=Needs.MODEL | Needs.MEMBERS | Needs.GRADIENTS,
    ),
    _research(
        "sld-seq", "SLD, one at a time, discounting rows like those chosen (rank-one)", sld_seq_pick
    ),
    _research(
        "sld-lookahead",
        "largest drop of the kept rows' total SLD, one at a time",
        sld_lookahead_pick,
    ),
    _research(
        "vr",
        "largest drop of the pool-averaged predictive variance (rank-one), one at a time",
        vr_pick,
        needs=Needs.MODEL | Needs.GRADIENTS,
        keep=vr_keep,
    ),
    _research("sld-power", f"rows drawn with probability ∝ SLD^{POWER_BETA}", sld_power_pick),
    _research(
        "sld-power-iw",
        "sld-power, fitted with LURE importance weights (simulation only)",
        sld_power_pick,
        weighted=True,
    ),
    _research("sld-density", "SLD times representativeness (RBF density), top-k", sld_density_pick),
    _research(
        "sld-kpp",
        "rows drawn ∝ SLD · D² (SLD-weighted k-means++ seeding, standardized inputs)",
        kpp_pick_with(lambda kept, rnd: rnd.model.on_rows(rnd.model.sld(), kept.x, rnd.devices)),
    ),
    _research(
        "kpp",
        "rows drawn ∝ D² (k-means++ seeding): sld-kpp without SLD",
        kpp_pick_with(lambda kept, rnd: np.ones(len(kept.ids))),
        needs=Needs.NOTHING,
        keep=uniform_sample,
    ),
    Strategy(
        "herding",
        "kernel herding: rows that make the labeled sample most like the pool (MMD, "
        "standardized inputs)",
        keep=uniform_sample,
        pick=herding_pick,
    ),
    _research(
        "sld-herding",
        "kernel herding toward the pool tilted by SLD (half uniform, half ∝ capped SLD)",
        sld_herding_pick,
    ),
    _research(
        "lcmd",
        "LCMD (Holzmüller 2023): the largest cluster's most distant row, in the model's "
        "gradient space",
        lcmd_pick_with(None),
        needs=Needs.MODEL | Needs.GRADIENTS,
    ),
    _research(
        "sld-lcmd",
        "LCMD with clusters and distances weighted by capped SLD, in the model's gradient space",
        lcmd_pick_with(capped_sld),
    ),
    _research(
        "sld-mix",
        f"{MIX_SHARE:.0%} of each batch uniform, the rest by sld (SLD-weighted k-means++)",
        mix_pick_with(sld_pick),
        needs=Needs.MODEL | Needs.TANGENT,
    ),
    _research(
        "sld-mix-iw",
        "sld-mix, fitted with LURE importance weights (simulation only)",
        mix_pick_with(sld_pick),
        needs=Needs.MODEL | Needs.TANGENT,
        weighted=True,
    ),
    _research(
        "sld-mix-auto",
        "sld-mix with the uniform share chosen each round by what the labels say (core/share.py)",
        mix_pick_with(sld_pick, labeled_share),
        needs=Needs.MODEL | Needs.TANGENT,
    ),
    _research(
        "herding-grad",
        "kernel herding in the model's gradient space (sketched), not the inputs",
        herding_grad_pick,
        needs=Needs.MODEL | Needs.GRADIENTS,
    ),
)
