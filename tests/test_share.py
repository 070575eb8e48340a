"""core/share.py: the uniform share of a mixed batch, chosen from the labels (checked against
constructed truths)."""

import numpy as np
import pytest

from alloop.core import share


def _labels(kind: str, seed: int, n_u: int = 40, n_a: int = 40, d: int = 8):
    """Uniform rows z ~ N(0, I) and active rows that are: like them ("same"), at high leverage under
    a linear truth ("informative": worth more than uniform rows), or at high leverage under a truth
    that no linear fit follows there ("misleading": they pull the fit away from the pool's typical
    rows)."""
    r = np.random.default_rng(seed)
    z = np.r_[r.normal(size=(n_u, d)), r.normal(size=(n_a, d)) * (1.0 if kind == "same" else 3.0)]
    if kind == "misleading":
        y = 3 * np.sin(2 * z[:, 0]) + z[:, 1] + 0.3 * r.normal(size=len(z))
        y = np.where(np.abs(z[:, 0]) > 2, 3 * np.abs(z[:, 0]), y)
    else:
        y = z @ np.ones(d) + 3.0 * r.normal(size=len(z))
    return z, y, np.r_[np.ones(n_u, bool), np.zeros(n_a, bool)]


def _shares(kind: str, seeds=range(12)) -> np.ndarray:
    return np.array(
        [share.choose_share(*_labels(kind, s), np.random.default_rng(100 + s)).share for s in seeds]
    )


def test_active_rows_that_mislead_the_fit_push_the_share_to_its_ceiling():
    shares = _shares("misleading")
    assert np.sum(shares == 1 - share.SHARE_FLOOR) >= 10


def test_informative_active_rows_lower_the_share_and_rows_like_uniform_ones_leave_it_near_even():
    informative, same = _shares("informative"), _shares("same")
    assert informative.mean() < 0.35
    assert 0.3 < same.mean() < 0.7
    assert informative.mean() < same.mean() - 0.1


def test_the_share_stays_within_its_bounds_and_is_the_prior_without_evidence():
    z, y, uniform = _labels("same", 0)
    for kind in ("same", "informative", "misleading"):
        assert (
            share.SHARE_FLOOR
            <= share.choose_share(*_labels(kind, 3), np.random.default_rng(0)).share
            <= 1 - share.SHARE_FLOOR
        )
    rng = np.random.default_rng(0)
    assert share.choose_share(z, y, np.ones(len(y), bool), rng) == (
        share.SHARE_PRIOR,
        pytest.approx(np.nan, nan_ok=True),
        len(y),
        0,
    )
    few = uniform.copy()
    few[share.MIN_UNIFORM - 1 :] = False
    assert share.choose_share(z, y, few, rng).share == share.SHARE_PRIOR
    assert share.choose_share(z, np.full(len(y), 2.0), uniform, rng).share == share.SHARE_PRIOR


def test_ridge_predict_is_least_squares_with_an_unpenalized_intercept():
    r = np.random.default_rng(1)
    z, y, z_new = r.normal(size=(30, 4)), r.normal(size=30), r.normal(size=(5, 4))
    lam = 2.5
    a = np.c_[np.ones(30), z]
    theta = np.linalg.solve(
        a.T @ a + np.diag([0.0, lam, lam, lam, lam]), a.T @ y
    )  # the intercept is not penalized
    np.testing.assert_allclose(
        share.ridge_predict(z, y, z_new, lam),
        np.c_[np.ones(5), z_new] @ theta,
        rtol=1e-10,
        atol=1e-10,
    )


def test_loo_errors_equal_refitting_without_each_row():
    r = np.random.default_rng(2)
    z = r.normal(size=(25, 3))
    y = z @ [1.0, -2.0, 0.5] + r.normal(size=25)
    brute = [
        np.mean(
            [
                (
                    share.ridge_predict(np.delete(z, i, 0), np.delete(y, i), z[i : i + 1], lam)[0]
                    - y[i]
                )
                ** 2
                for i in range(25)
            ]
        )
        for lam in share.LAMBDAS
    ]
    np.testing.assert_allclose(share.loo_errors(z, y), brute, rtol=1e-8)
    assert share.loocv_lambda(z, y) == share.LAMBDAS[int(np.argmin(brute))]


def test_the_comparison_adds_as_many_active_as_uniform_rows_to_the_same_base(monkeypatch):
    """Each held-out fold's two fits share their base rows and differ only in m uniform rows against
    m active ones."""
    z, y, uniform = _labels("same", 0, n_u=20, n_a=7)
    fits = []
    real = share.ridge_predict
    monkeypatch.setattr(
        share,
        "ridge_predict",
        lambda zt, yt, zn, lam: fits.append(zt.copy()) or real(zt, yt, zn, lam),
    )
    losses = share.held_out_losses(z, y, uniform, 1.0, np.random.default_rng(0))
    assert losses.shape == (20, 2) and np.all(losses >= 0)
    assert len(fits) == 2 * share.FOLDS * share.DRAWS
    for plain, mixed in zip(fits[::2], fits[1::2]):
        assert (
            len(plain) == len(mixed) == 16
        )  # 16 other uniform rows: a base of 9 plus 7 uniform or the 7 active rows
        rows = {tuple(v) for v in z.round(12)}
        active = {tuple(v) for v in z[~uniform].round(12)}
        assert {tuple(v) for v in plain.round(12)} <= rows - active
        assert len({tuple(v) for v in mixed.round(12)} & active) == 7
        np.testing.assert_array_equal(plain[:9], mixed[:9])
