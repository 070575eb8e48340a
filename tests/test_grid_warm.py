"""The grid search's warm start (``choose_s.choose_grid(warm=...)``) and the stable folds it rests
on.

A fold's training may start the next round's only if it never saw that fold's held-out rows, old or
new: that holds when appending labels leaves the first rows' folds as they were. Checked on the
masks themselves, then on a search: a warm start on other labels is refused, and a warm search on a
small MLP lands on the cold search's CV loss within the spread of the grid.
"""

from __future__ import annotations

import numpy as np
import pytest

from alloop.config import PoolSpec, RunConfig
from alloop.core import hyper
from alloop.training import choose_s
from alloop.training import fit as fitting


@pytest.mark.parametrize("n, k", [(31, 5), (64, 5), (200, 5), (47, 3)])
def test_folds_are_balanced_and_kept_as_rows_are_appended(n, k):
    which = hyper.fold_of_rows(n, k, seed=7)
    sizes = np.bincount(which, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    for more in (1, 9, 40):
        assert np.array_equal(hyper.fold_of_rows(n + more, k, seed=7)[:n], which)
    old, new = hyper.fold_masks(n, k, 7), hyper.fold_masks(n + 13, k, 7)
    # fold j's training rows then are among its training rows now: it saw none of its held-out rows
    assert np.array_equal(new[:, :n], old)
    assert not np.array_equal(hyper.fold_of_rows(n, k, seed=8), which)


def _config(d: int) -> RunConfig:
    pool = PoolSpec("p", "p", "id", tuple(f"x{j}" for j in range(d)), "", 10_000)
    spec = fitting.model_spec("mlp")
    return RunConfig(
        pool, {"mean": [0.0] * d, "std": [1.0] * d}, spec, "regression", ("target",), s="auto"
    )


def _data(n, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.normal(size=n))[:, None]
    return x, y


def test_a_warm_start_from_other_labels_is_not_used():
    config = _config(3)
    x, y = _data(70)
    first = choose_s.choose_grid(config, x[:50], y[:50], steps=200)
    state = first.grid_state
    assert state.n == 50 and state.fits(x, y, state.folds, choose_s.GRID_S)
    y_other = y.copy()
    y_other[3] += 1.0
    assert not state.fits(x, y_other, state.folds, choose_s.GRID_S)  # a changed early label
    assert not state.fits(x[:50], y[:50], state.folds, choose_s.GRID_S)  # no new label
    assert not state.fits(x, y, state.folds + 1, choose_s.GRID_S)  # other folds


def test_a_warm_search_reaches_the_cold_searchs_loss():
    """250 steps from the last round's trainings at its chosen s against 1000 from the initial
    parameters: the chosen s's CV loss agrees within a tenth of the grid's range."""
    config = _config(3)
    x, y = _data(90, seed=1)
    prev = choose_s.choose_grid(config, x[:70], y[:70])
    cold = choose_s.choose_grid(config, x, y)
    warm = choose_s.choose_grid(config, x, y, warm=prev.grid_state)
    spread = max(e.loss for e in cold.evaluations) - min(e.loss for e in cold.evaluations)
    assert abs(warm.cv_loss - cold.cv_loss) <= 0.1 * spread
    assert warm.row_loss.shape == (90,)
