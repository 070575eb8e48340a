"""The streaming top-k equals a full sort, whatever the batching; farthest-point picks spread
out."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from alloop.core import ranking as selection


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    k=st.integers(1, 40),
    batch=st.integers(1, 97),
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_streaming_topk_equals_full_sort(n, k, batch, seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, n).astype(np.float64) if ties else rng.random(n)
    ids = rng.permutation(n).astype(np.int64) * 3
    x = np.arange(n, dtype=np.float32)[:, None]
    state = selection.topk_empty(k, 1, np.int64)
    for i in range(0, n, batch):
        state = selection.topk_merge(
            state, scores[i : i + batch], ids[i : i + batch], x[i : i + batch], k
        )
    order = np.lexsort((ids, -scores))[:k]
    np.testing.assert_array_equal(state.ids, ids[order])
    np.testing.assert_array_equal(state.scores, scores[order])
    np.testing.assert_array_equal(state.x[:, 0], x[order, 0])


def test_nan_scores_rank_last():
    state = selection.topk_merge(
        selection.topk_empty(2, 1, np.int64),
        np.array([np.nan, 1.0, 0.5]),
        np.array([1, 2, 3]),
        np.zeros((3, 1), np.float32),
        2,
    )
    np.testing.assert_array_equal(state.ids, [2, 3])


def test_farthest_point_spreads():
    z = np.array([[0.0], [0.1], [0.2], [5.0], [10.0]])
    picks = selection.farthest_point(z, np.full(5, np.inf), 3)
    assert set(picks) == {3, 0, 4} or set(picks) == {3, 4, 0}
    picks = selection.farthest_point(z, np.abs(z[:, 0] - 0.0), 2)  # row 0 is "labeled"
    assert list(picks) == [4, 3] or list(picks)[0] == 4
