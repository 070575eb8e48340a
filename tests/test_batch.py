"""SLD-weighted k-means++ batches: spread out, follow the scores, refuse outliers' pull, reproducible."""

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
    """A tight cluster of the highest scores: top-k takes the cluster, kpp leaves it after a pick or two."""
    rng = np.random.default_rng(2)
    z = np.r_[rng.normal(0, 0.01, size=(50, 2)), rng.normal(0, 3, size=(450, 2))]
    s = np.r_[np.full(50, 10.0), np.ones(450)]
    picks, _ = kpp_clip(z, s, np.zeros((0, 2)), 10, np.random.default_rng(3))
    assert np.sum(picks < 50) <= 3
    top = np.argsort(-s, kind="stable")[:10]
    assert np.all(top < 50)


def test_clip_bounds_an_outlier_score():
    """A row with a wild score among ordinary ones: drawn almost always unclipped, rarely once clipped."""
    z = np.linspace(-1, 1, 100)[:, None]
    s = np.ones(100)
    s[50] = 1e9
    labeled = np.array([[5.0]])
    draw = lambda clip: np.mean([kpp_clip(z, s, labeled, 1, np.random.default_rng(i), clip=clip)[0][0] == 50 for i in range(200)])  # noqa: E731
    assert draw(1.0) > 0.99
    assert draw(0.9) < 0.1
