"""core.linear_cv: the numpy closed forms behind the exact route of choosing s.

References are independent of the code under test: ridge refitted by numpy with each fold or row
left out on features built by hand (test_hyper's helpers), central finite differences in s, and the
general autodiff G_pert of ``hyper.g_pert`` (a dense Hessian of the objective).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_hyper import _brute_cv, _features, _flat, _problem, _ridge

from alloop.core import hyper, linear_cv
from alloop.training import cv_routes


def _cv(prob, data, params0, masks, w=None):
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, data.x)
    y = np.asarray(data.y, np.float64)
    w = np.ones(len(y)) if w is None else w
    return linear_cv.LinearCV(form.jac, form.offset, y, w, masks, form.dmat, form.lin)


@pytest.fixture(scope="module")
def setup():
    prob, data, params0 = _problem(np.random.default_rng(11), n=37)
    return prob, data, params0, _features(prob, data.x), np.asarray(data.y, np.float64)


@pytest.mark.parametrize("s", [0.01, 0.7, 40.0])
def test_fold_cv_equals_refitting_every_fold(setup, s):
    prob, data, params0, a, y = setup
    masks = hyper.fold_masks(len(y), 5, seed=2)
    cv = _cv(prob, data, params0, masks)
    assert cv(s)[0] == pytest.approx(_brute_cv(a, y, masks, s), rel=1e-9)
    theta, _ = cv.fold_solutions(s)
    for j, m in enumerate(masks):
        np.testing.assert_allclose(theta[j], _flat(_ridge(a[m > 0], y[m > 0], s)[:, 0]), rtol=1e-8)


@pytest.mark.parametrize("s", [0.01, 0.7, 40.0])
def test_hypergradient_and_tangent_equal_finite_differences(setup, s):
    prob, data, params0, _, y = setup
    cv = _cv(prob, data, params0, hyper.fold_masks(len(y), 5, seed=2))
    h = 1e-5 * s
    fd = (cv(s + h)[0] - cv(s - h)[0]) / (2 * h)
    assert cv(s)[1] == pytest.approx(fd, rel=1e-5)
    _, tdot = cv.full_solution(s)
    fd_theta = (cv.full_solution(s + h)[0] - cv.full_solution(s - h)[0]) / (2 * h)
    np.testing.assert_allclose(tdot, fd_theta, rtol=1e-5, atol=1e-9)


def test_row_losses_are_each_rows_held_out_error(setup):
    prob, data, params0, a, y = setup
    masks = hyper.fold_masks(len(y), 4, seed=5)
    rows = _cv(prob, data, params0, masks).row_losses(0.3)
    for m in masks:
        out = m == 0
        theta = _ridge(a[~out], y[~out], 0.3)
        np.testing.assert_allclose(
            rows[out], np.sum((a[out] @ theta - y[out]) ** 2, axis=1), rtol=1e-8
        )


@pytest.mark.parametrize("s", [1e-3, 0.3, 30.0])
def test_loocv_equals_refitting_without_each_row_and_its_derivative_fd(setup, s):
    prob, data, params0, a, y = setup
    cv = _cv(prob, data, params0, np.ones((1, len(y))))
    brute = np.array(
        [y[i] - a[i] @ _ridge(np.delete(a, i, 0), np.delete(y, i, 0), s) for i in range(len(y))]
    )
    value, deriv = cv.loocv(s)
    assert value == pytest.approx(float(np.mean(brute**2)), rel=1e-8)
    np.testing.assert_allclose(cv.loo_rows(s), np.sum(brute**2, axis=1), rtol=1e-7)
    h = 1e-5 * s
    fd = (cv.loocv(s + h)[0] - cv.loocv(s - h)[0]) / (2 * h)
    assert deriv == pytest.approx(fd, rel=1e-5)


def test_multi_output_weighted_loocv_equals_refitting(rng):
    prob, data, params0 = _problem(rng, n=25, k=2, degree=2)
    w = rng.choice([0.5, 1.0, 2.0], size=25)
    a, y, s = _features(prob, data.x, degree=2), np.asarray(data.y, np.float64), 0.7
    brute = np.array(
        [
            y[i] - a[i] @ _ridge(np.delete(a, i, 0), np.delete(y, i, 0), s, np.delete(w, i))
            for i in range(25)
        ]
    )
    cv = _cv(prob, data, params0, np.ones((1, 25)), w=w)
    np.testing.assert_allclose(cv.loo_rows(s), np.sum(brute**2, axis=1), rtol=1e-7)


def test_weight_zero_rows_change_nothing(setup):
    """Padding rows (weight 0) are neither trained on nor validated: the CV of the first n rows."""
    prob, data, params0, _, y = setup
    n = 30
    masks = hyper.fold_masks(n, 5, seed=1)
    short = _cv(prob, data._replace(x=data.x[:n], y=data.y[:n], w=data.w[:n]), params0, masks)
    padded_masks = np.c_[masks, np.ones((5, len(y) - n))]
    w = np.r_[np.ones(n), np.zeros(len(y) - n)]
    padded = _cv(prob, data, params0, padded_masks, w=w)
    for s in (0.1, 5.0):
        np.testing.assert_allclose(padded(s), short(s), rtol=1e-10)
        np.testing.assert_allclose(padded.row_losses(s)[:n], short.row_losses(s), rtol=1e-10)


@pytest.mark.parametrize("anchor", [False, True])
def test_g_pert_equals_autodiff_g_pert(rng, anchor):
    prob, data, params0 = _problem(rng, n=30, anchor=anchor)
    cv = _cv(prob, data, params0, np.ones((1, 30)))
    s = 0.5
    theta, _ = cv.full_solution(s)
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, data.x)
        params = form.unravel(theta)
    assert cv.g_pert(s) == pytest.approx(hyper.g_pert(prob, params, s, data).value, rel=1e-7)


def test_linear_rows_in_chunks_equal_the_linear_form(setup):
    """The exact route's chunked autodiff (fixed shape, any row count) gives hyper.linear_form's
    J."""
    prob, data, params0, _, _ = setup
    compiled = cv_routes.Compiled(prob, params0)
    x = np.repeat(np.asarray(data.x), 8, axis=0)[: cv_routes.CHUNK + 13]  # two chunks, one partial
    jac, offset = compiled.linear_rows(x)
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, x)
    np.testing.assert_allclose(jac, np.asarray(form.jac), rtol=1e-12)
    np.testing.assert_allclose(offset, np.asarray(form.offset), atol=1e-12)
    dmat, lin = compiled.reg_form()
    np.testing.assert_allclose(dmat, np.asarray(form.dmat))
    np.testing.assert_allclose(lin, np.asarray(form.lin))


def test_the_search_on_the_closed_forms_takes_the_jax_solves_path(setup):
    """The exact route's numpy closed forms replaced jitted JAX solves (``hyper.exact_cv``): the
    same folds give the same search, step for step, and the same chosen s."""
    prob, data, params0, _, y = setup
    masks = hyper.fold_masks(len(y), 5, seed=0)
    numpy_cv = _cv(prob, data, params0, masks)
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, data.x)
        d64 = hyper.cast(data, jax.numpy.float64)
        fn = jax.jit(lambda m, s: hyper.exact_cv(prob, form, d64, m, s))

        def jax_cv(s):
            with jax.enable_x64(True):
                return tuple(map(float, fn(jax.numpy.asarray(masks, jax.numpy.float64), s)))

        a = hyper.minimize_log_s(jax_cv, 1.0)
        b = hyper.minimize_log_s(numpy_cv, 1.0)
    assert a.stop == b.stop and len(a.evaluations) == len(b.evaluations)
    assert b.s == pytest.approx(a.s, rel=1e-9)
    for ea, eb in zip(a.evaluations, b.evaluations):
        assert eb.loss == pytest.approx(ea.loss, rel=1e-9)
        assert eb.grad == pytest.approx(ea.grad, rel=1e-6, abs=1e-12)
