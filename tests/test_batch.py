"""SLD-weighted k-means++ batches: spread out, follow the scores, refuse outliers' pull,
reproducible."""

from __future__ import annotations

import numpy as np

from alloop.core.diversity import kpp_clip


def test_batches_are_distinct_and_reproducible():
    rng = np.random.default_rng(0)
    z, s = rng.normal(size=(300, 2)), rng.random(300)
    a, pa = kpp_clip(z, s, z[:5], 20, np.random.default_rng(7))
    b, _ = kpp_clip(z, s, z[:5], 20, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 20 and np.all((pa > 0) & (pa <= 1))


def test_zero_score_rows_are_never_drawn_while_others_remain():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 2))
    s = np.where(np.arange(200) < 100, 1.0, 0.0)
    picks, _ = kpp_clip(z, s, np.zeros((0, 2)), 30, np.random.default_rng(0), clip=1.0)
    assert np.all(picks < 100)


def test_batch_spreads_out_compared_with_top_k():
    """A tight cluster of the highest scores: top-k takes the cluster, kpp leaves it after a pick or
    two."""
    rng = np.random.default_rng(2)
    z = np.r_[rng.normal(0, 0.01, size=(50, 2)), rng.normal(0, 3, size=(450, 2))]
    s = np.r_[np.full(50, 10.0), np.ones(450)]
    picks, _ = kpp_clip(z, s, np.zeros((0, 2)), 10, np.random.default_rng(3))
    assert np.sum(picks < 50) <= 3
    top = np.argsort(-s, kind="stable")[:10]
    assert np.all(top < 50)


def test_clip_bounds_an_outlier_score():
    """A row with a wild score among ordinary ones: drawn almost always unclipped, rarely once
    clipped."""
    z = np.linspace(-1, 1, 100)[:, None]
    s = np.ones(100)
    s[50] = 1e9
    labeled = np.array([[5.0]])
    draw = lambda clip: np.mean(
        [
            kpp_clip(z, s, labeled, 1, np.random.default_rng(i), clip=clip)[0][0] == 50
            for i in range(200)
        ]
    )  # noqa: E731
    assert draw(1.0) > 0.99
    assert draw(0.9) < 0.1


# --- kernel herding -------------------------------------------------------------------------------


def _mmd2(sample: np.ndarray, pool: np.ndarray, h: float) -> float:
    """Squared maximum mean discrepancy with the RBF kernel exp(-d²/h), computed directly."""

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / h)

    return float(k(sample, sample).mean() - 2 * k(sample, pool).mean() + k(pool, pool).mean())


def _two_clusters(rng, big=800, small=200):
    return np.r_[rng.normal(size=(big, 2)), rng.normal(size=(small, 2)) + [8.0, 0.0]]


def test_herding_follows_the_pool_density():
    """Nothing labeled: 10 rows from a pool that is 80% one cluster, 20% another are split about 8
    to 2."""
    from alloop.core.diversity import herding

    rng = np.random.default_rng(0)
    z = _two_clusters(rng)
    picks = herding(z, np.zeros((0, 2)), 10, np.random.default_rng(1), reference=1000)
    assert len(set(picks.tolist())) == 10
    assert 7 <= int(np.sum(picks < 800)) <= 9


def test_herding_brings_the_labeled_sample_closer_to_the_pool_than_random_draws():
    from alloop.core.diversity import herding, rbf_bandwidth

    rng = np.random.default_rng(2)
    z = np.c_[rng.lognormal(size=600), rng.normal(size=600), rng.standard_t(3, size=600)]
    labeled = z[:5]
    picks = herding(z, labeled, 15, np.random.default_rng(3), reference=600)
    h = rbf_bandwidth(z, np.random.default_rng(3))
    ours = _mmd2(np.r_[labeled, z[picks]], z, h)
    random_draws = [
        _mmd2(np.r_[labeled, z[rng.choice(600, 15, replace=False)]], z, h) for _ in range(50)
    ]
    assert ours < np.quantile(random_draws, 0.05)


def test_herding_fills_what_the_labels_leave_thin():
    """20 labels already in the big cluster: the next rows go mostly to the small one, which has
    none."""
    from alloop.core.diversity import herding

    rng = np.random.default_rng(4)
    z = _two_clusters(rng)
    picks = herding(z, z[:20], 6, np.random.default_rng(5), reference=1000)
    assert np.sum(picks >= 800) >= 4


def test_herding_weights_tilt_the_target_and_uniform_weights_change_nothing():
    from alloop.core.diversity import herding

    rng = np.random.default_rng(6)
    z = _two_clusters(rng)
    plain = herding(z, np.zeros((0, 2)), 10, np.random.default_rng(1), reference=1000)
    np.testing.assert_array_equal(
        herding(
            z,
            np.zeros((0, 2)),
            10,
            np.random.default_rng(1),
            reference=1000,
            weights=np.full(1000, 3.0),
        ),
        plain,
    )
    # half the target mass on the small cluster (20% of the rows): about half the batch goes there
    w = np.where(np.arange(1000) >= 800, 0.5 / 200, 0.5 / 800)
    tilted = herding(z, np.zeros((0, 2)), 10, np.random.default_rng(1), reference=1000, weights=w)
    assert np.sum(plain >= 800) <= 3 and 4 <= np.sum(tilted >= 800) <= 6


# --- LCMD: the largest cluster's most distant point -----------------------------------------------


def _lcmd_by_hand(e, labeled, k, w):
    """LCMD spelled out with loops: clusters of nearest centers, sizes Σ w d², the biggest one's
    farthest row."""
    centers, chosen = [tuple(c) for c in labeled], []
    for _ in range(k):
        best = {}
        for i, x in enumerate(e):
            if i in chosen:
                continue
            d2 = [float(np.sum((x - np.asarray(c)) ** 2)) for c in centers]
            c = int(np.argmin(d2))
            best.setdefault(c, []).append((w[i] * d2[c], i))
        size = {c: sum(v for v, _ in rows) for c, rows in best.items()}
        top = max(size, key=size.get)
        j = max(best[top])[1]
        chosen.append(j)
        centers.append(tuple(e[j]))
    return chosen


def test_lcmd_picks_the_largest_clusters_most_distant_row_as_spelled_out():
    from alloop.core.diversity import lcmd

    rng = np.random.default_rng(4)
    e, labeled = rng.normal(size=(120, 3)), rng.normal(size=(6, 3))
    for w in (np.ones(120), rng.random(120) ** 2):
        picks, at = lcmd(e, labeled, 8, w)
        assert picks.tolist() == _lcmd_by_hand(e, labeled, 8, w)
        assert np.all(at > 0)


def test_lcmd_weights_steer_it_and_zero_weights_are_never_taken():
    from alloop.core.diversity import lcmd

    rng = np.random.default_rng(5)
    e = np.r_[rng.normal(0, 1, size=(100, 2)), rng.normal(0, 1, size=(100, 2)) + [6.0, 0.0]]
    labeled = np.array([[0.0, 0.0], [6.0, 0.0]])
    w = np.r_[np.zeros(100), np.ones(100)]
    picks, _ = lcmd(e, labeled, 10, w)
    assert np.all(picks >= 100)  # only the weighted half, although both clusters are as wide
    plain, _ = lcmd(e, labeled, 10)
    assert np.any(plain < 100) and np.any(plain >= 100)  # unweighted, it spreads over both
