"""core.hyper: the hypergradient of a cross-validated loss, closed-form LOOCV, G_pert and the log-s
search.

References are independent of the code under test: ridge regression solved with numpy on features
built by hand from the standardizer (z = (x − mean)/scale, powers, a free bias), and brute-force
retraining with a row or a fold left out.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from alloop.core import hyper, losses, models, objective, regularizers

DEGREE = 3


def _problem(rng, n=40, d=2, k=1, degree=DEGREE, anchor=False):
    """A poly model on inputs whose standardizer is deliberately not the data's own moments."""
    x = (rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d) + np.linspace(-1.0, 4.0, d)).astype(
        np.float32
    )
    y = (np.sin(x[:, :1]) + 0.1 * x[:, -1:] ** 2 + 0.3 * rng.normal(size=(n, k))).astype(np.float32)
    model = models.poly(d, k, degree)
    stats = models.fit_standardizer(x.mean(0) + 0.3, x.std(0) * 1.5)
    params0 = model.init(None)
    if anchor:
        theta0 = jax.tree_util.tree_map(
            lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params0
        )
        reg = regularizers.anchor(theta0)
    else:
        reg = regularizers.l2_weights(params0)
    prob = objective.Problem(model, losses.squared, reg, stats)
    return prob, objective.make_data(x, y), params0


def _features(prob, x, degree=DEGREE):
    """A = [z, c², …, 1] by hand, c = z held within ±3: the model's design matrix, weights-then-bias
    layout."""
    mean = np.asarray(prob.stats.mean, np.float64)
    scale = np.asarray(prob.stats.scale, np.float64)
    z = (np.asarray(x, np.float64) - mean) / scale
    c = np.minimum(np.maximum(z, -3.0), 3.0)
    return np.c_[
        np.concatenate([z] + [c**j for j in range(2, degree + 1)], axis=1), np.ones(len(z))
    ]


def _ridge(a, y, s, w=None):
    """argmin Σ w_i ||a_iᵀΘ − y_i||² + s ||Θ_weights||², the bias row free."""
    w = np.ones(len(a)) if w is None else w
    dmat = np.diag([1.0] * (a.shape[1] - 1) + [0.0])
    return np.linalg.solve((a * w[:, None]).T @ a + s * dmat, (a * w[:, None]).T @ y)


def _brute_cv(a, y, masks, s):
    """Mean squared held-out error with every fold retrained from scratch."""
    errs = []
    for m in masks:
        keep = m > 0
        theta = _ridge(a[keep], y[keep], s)
        errs.append(np.sum((a[~keep] @ theta - y[~keep]) ** 2, axis=1))
    return float(np.mean(np.concatenate(errs)))


def _flat(theta):
    """[w; b] (one output) in the layout of the flattened parameter tree."""
    with jax.enable_x64(True):
        return np.asarray(ravel_pytree({"w": theta[:-1], "b": theta[-1]})[0])


@pytest.fixture(scope="module")
def poly():
    prob, data, params0 = _problem(np.random.default_rng(3))
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, data.x)
    return prob, data, params0, form, _features(prob, data.x), np.asarray(data.y, np.float64)


@pytest.fixture(scope="module")
def exact_cv(poly):
    """hyper.exact_cv on the poly problem, jitted once (float64)."""
    prob, data = poly[:2]
    fn = jax.jit(lambda form, m, s: hyper.exact_cv(prob, form, data, m, s))

    def run(form, masks, s):
        with jax.enable_x64(True):
            return tuple(map(float, fn(form, jnp.asarray(masks, jnp.float64), jnp.float64(s))))

    return run


# --- the linear form ---------------------------------------------------------------------------


@pytest.mark.parametrize("anchor", [False, True])
def test_linear_form_reproduces_model_and_regularizer(rng, anchor):
    prob, data, params0 = _problem(rng, k=2, anchor=anchor)
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, data.x)
        flat = jnp.asarray(rng.normal(size=form.dmat.shape[0]))
        params = form.unravel(flat)
        p32, x = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params), data.x
        out = np.asarray(prob.model.apply(p32, prob.stats, x), np.float64)
        np.testing.assert_allclose(
            np.einsum("nkp,p->nk", form.jac, flat) + form.offset, out, rtol=1e-4, atol=1e-4
        )
        r = float(flat @ form.dmat @ flat + form.lin @ flat) + float(
            prob.reg.value(form.unravel(jnp.zeros_like(flat)))
        )
        assert r == pytest.approx(float(prob.reg.value(params)), rel=1e-10)


def test_fold_solutions_are_the_folds_ridge_and_its_s_derivative(poly):
    prob, data, _, form, a, y = poly
    masks = hyper.fold_masks(len(y), 4, seed=1)
    s, delta = 2.0, 1e-4
    with jax.enable_x64(True):
        theta, tdot = map(np.asarray, hyper.fold_solutions(form, y, data.w, masks, s))
    for j, m in enumerate(masks):
        keep = m > 0
        np.testing.assert_allclose(
            theta[j], _flat(_ridge(a[keep], y[keep], s)), rtol=1e-8, atol=1e-10
        )
        fd = (_ridge(a[keep], y[keep], s + delta) - _ridge(a[keep], y[keep], s - delta)) / (
            2 * delta
        )
        np.testing.assert_allclose(tdot[j], _flat(fd), rtol=1e-5, atol=1e-9)


# --- the hypergradient ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.05, 1.0, 20.0])
def test_hypergradient_equals_finite_difference_of_cv_loss(poly, exact_cv, s):
    """dCV/ds = Σ_val ∇L·θ̇ / n equals the central difference of brute-force 5-fold CV in s."""
    prob, data, _, form, a, y = poly
    masks = hyper.fold_masks(len(y), 5, seed=0)
    cv, grad = exact_cv(form, masks, s)
    delta = 1e-4 * s
    fd = (_brute_cv(a, y, masks, s + delta) - _brute_cv(a, y, masks, s - delta)) / (2 * delta)
    assert cv == pytest.approx(_brute_cv(a, y, masks, s), rel=1e-9)
    assert grad == pytest.approx(fd, rel=1e-5, abs=1e-12)
    assert abs(fd) > 1e-6  # not a vacuous comparison of two zeros


def test_hypergradient_of_a_wrong_tangent_is_wrong(poly):
    """The same check fails when θ̇ is off: flipped, or missing the regularized coordinates' ρ."""
    prob, data, _, form, a, y = poly
    masks = hyper.fold_masks(len(y), 5, seed=0)
    s = 1.0
    with jax.enable_x64(True):
        theta, tdot = hyper.fold_solutions(form, y, data.w, masks, s)
        params = jax.vmap(form.unravel)(theta)
        good = hyper.cv_loss_and_hypergradient(
            prob, params, jax.vmap(form.unravel)(tdot), hyper.cast(data, jnp.float64), masks
        )[1]
        bad = hyper.cv_loss_and_hypergradient(
            prob, params, jax.vmap(form.unravel)(-tdot), hyper.cast(data, jnp.float64), masks
        )[1]
    fd = (_brute_cv(a, y, masks, s + 1e-4) - _brute_cv(a, y, masks, s - 1e-4)) / 2e-4
    assert float(good) == pytest.approx(fd, rel=1e-5)
    assert float(bad) != pytest.approx(fd, rel=0.5)


# --- closed-form LOOCV ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1e-3, 0.3, 10.0, 300.0])
def test_loocv_closed_form_equals_brute_force_retraining(poly, s):
    prob, data, _, form, a, y = poly
    brute = np.array(
        [y[i] - a[i] @ _ridge(np.delete(a, i, 0), np.delete(y, i, 0), s) for i in range(len(y))]
    )
    with jax.enable_x64(True):
        loo = hyper.loocv(form, y, data.w, s)
    np.testing.assert_allclose(np.asarray(loo.residuals), brute, rtol=1e-7, atol=1e-10)
    assert float(loo.loss) == pytest.approx(float(np.mean(brute**2)), rel=1e-8)


def test_loocv_closed_form_multi_output_with_weights(rng):
    """Two outputs and unequal row weights: the block form (I − w_i J_i M⁻¹ J_iᵀ)⁻¹ e_i, against
    retraining."""
    prob, data, params0 = _problem(rng, n=25, k=2, degree=2)
    w = rng.choice([0.5, 1.0, 2.0], size=25)
    data = data._replace(w=jnp.asarray(w, jnp.float32))
    a, y, s = _features(prob, data.x, degree=2), np.asarray(data.y, np.float64), 0.7
    brute = np.array(
        [
            y[i] - a[i] @ _ridge(np.delete(a, i, 0), np.delete(y, i, 0), s, np.delete(w, i))
            for i in range(25)
        ]
    )
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, params0, data.x)
        loo = hyper.loocv(form, y, w, s)
    np.testing.assert_allclose(np.asarray(loo.residuals), brute, rtol=1e-7, atol=1e-10)


def test_loocv_closed_form_outputs_sharing_parameters(rng):
    """Outputs coupled through shared weights, F = [z·w + b1, z·(w + v) + b2]: the k×k blocks are
    not diagonal."""
    n, d, s = 20, 3, 0.4
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=(n, 2))

    def init(key):
        return {
            "w": jnp.zeros((d,), jnp.float32),
            "v": jnp.zeros((d,), jnp.float32),
            "b": jnp.zeros((2,), jnp.float32),
        }

    def apply(p, stats, x):
        z = models.standardize(stats, x)
        return jnp.stack([z @ p["w"] + p["b"][0], z @ (p["w"] + p["v"]) + p["b"][1]], axis=1)

    model = models.Model("linear", init, apply, d, 2)
    mask = {"w": jnp.ones(d), "v": jnp.ones(d), "b": jnp.zeros(2)}
    prob = objective.Problem(
        model, losses.squared, regularizers.l2(mask), models.identity_standardizer(d)
    )
    xs = np.asarray(x, np.float64)
    one, nil = np.ones((n, 1)), np.zeros((n, 1))
    rows = np.stack(
        [np.c_[one, nil, 0 * xs, xs], np.c_[nil, one, xs, xs]], axis=1
    )  # (n, 2, p), columns b1, b2, v, w
    dmat = np.diag([0.0, 0.0] + [1.0] * (2 * d))

    def fit(keep):
        a = rows[keep].reshape(-1, rows.shape[2])
        return np.linalg.solve(a.T @ a + s * dmat, a.T @ y[keep].reshape(-1))

    brute = np.array([y[i] - rows[i] @ fit(np.arange(n) != i) for i in range(n)])
    with jax.enable_x64(True):
        form = hyper.linear_form(prob, init(None), x)
        loo = hyper.loocv(form, y, np.ones(n), s)
    np.testing.assert_allclose(np.asarray(loo.residuals), brute, rtol=1e-7, atol=1e-10)


def test_loocv_folds_agree_with_closed_form_value_and_derivative(poly, exact_cv):
    """LOOCV as n folds with exact tangents = the closed form, and its hypergradient = the closed
    form's derivative."""
    prob, data, _, form, _, y = poly
    for s in (0.01, 3.0):
        cv, grad = exact_cv(form, hyper.fold_masks(len(y), len(y)), s)
        with jax.enable_x64(True):
            value, deriv = hyper.loocv_and_derivative(form, y, data.w, s)
            assert float(cv) == pytest.approx(float(value), rel=1e-9)
            assert float(grad) == pytest.approx(float(deriv), rel=1e-6)


# --- G_pert --------------------------------------------------------------------------------------


def test_g_pert_on_ridge_is_loocv_to_first_order_in_the_leverage(poly):
    """σ_jᵀH⁻¹σ_j = 2 e_j² h_jj for ridge, so G_pert = mean e²(1 + 2h), LOOCV's expansion of
    e²/(1−h)²."""
    prob, data, _, form, a, y = poly
    s = 2.0
    theta = _ridge(a, y, s)
    e = (a @ theta - y)[:, 0]
    dmat = np.diag([1.0] * (a.shape[1] - 1) + [0.0])
    h = np.einsum("ij,jk,ik->i", a, np.linalg.inv(a.T @ a + s * dmat), a)
    params = {"w": jnp.asarray(theta[:-1], jnp.float32), "b": jnp.asarray(theta[-1], jnp.float32)}
    gp = hyper.g_pert(prob, params, s, data)
    assert gp.value == pytest.approx(float(np.mean(e**2 * (1 + 2 * h))), rel=1e-4)
    assert gp.self_influence == pytest.approx(float(np.mean(2 * e**2 * h)), rel=1e-4)
    loo = float(np.mean((e / (1 - h)) ** 2))
    assert gp.loss < gp.value < loo  # between the training loss and LOOCV (all h in (0, 1))


# --- folds and the search -------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", [(23, 5), (10, 3), (6, 6), (6, 50)])
def test_fold_masks_leave_each_row_out_once(n, k):
    masks = hyper.fold_masks(n, k, seed=4)
    assert masks.shape == (min(k, n), n)
    np.testing.assert_array_equal((1 - masks).sum(0), np.ones(n))
    sizes = (1 - masks).sum(1)
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(masks, hyper.fold_masks(n, k, seed=4))


def _wavy(u):
    """Several local minima in u = log s (like the paper's Figure 2)."""
    return 0.1 * (u - 1.0) ** 2 + 0.3 * math.sin(3 * u), 0.2 * (u - 1.0) + 0.9 * math.cos(3 * u)


@pytest.mark.parametrize("s0", [1e-3, 0.2, 1.0, 30.0, 1e3])
def test_search_ends_at_a_local_minimum_no_worse_than_its_start(s0):
    res = hyper.minimize_log_s(
        lambda s: (_wavy(math.log(s))[0], _wavy(math.log(s))[1] / s), s0, 1e-4, 1e5, tol=1e-3
    )
    u = math.log(res.s)
    value, slope = _wavy(u)
    assert res.stop == "converged"
    assert abs(slope) < 0.01  # stationary ...
    assert _wavy(u - 0.05)[0] > value and _wavy(u + 0.05)[0] > value  # ... and a minimum
    assert res.loss <= _wavy(math.log(s0))[0]
    assert len(res.evaluations) <= 16


def test_search_stops_at_a_bound_when_the_loss_keeps_falling():
    res = hyper.minimize_log_s(lambda s: (1.0 / s, -1.0 / s**2), 1.0, 1e-2, 1e3)
    assert res.stop == "bound" and res.s == pytest.approx(1e3)
    res = hyper.minimize_log_s(lambda s: (s, 1.0), 1.0, 1e-2, 1e3)
    assert res.stop == "bound" and res.s == pytest.approx(1e-2)
