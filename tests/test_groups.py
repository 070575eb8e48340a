"""Per-group parameters under eq 99 (core/groups.py), checked against independent facts.

References: finite differences of a float64 L-BFGS optimum in s, the autodiff'd mixed derivative,
re-weighted retraining (eq 101-103) and the closed form of a pooled ridge fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_helpers import cosine, minimize64, rel_err
from jax.flatten_util import ravel_pytree

from alloop.core import groups, losses, models, objective, regularizers, sgdf, tangents


def _flat(tree):
    return np.asarray(ravel_pytree(jax.tree_util.tree_map(np.asarray, tree))[0], np.float64)


def grouped_problem(rng, spread=(0.1, 0.3, 1.0, 2.0), per=15, d=2, noise=0.3, n_groups=None):
    """Rows of len(spread) groups whose slopes deviate from shared ones by about ``spread[i]``."""
    g = len(spread)
    x = rng.normal(size=(g * per, d))
    code = np.repeat(np.arange(g), per)
    dev = rng.normal(size=(g, d)) * np.asarray(spread)[:, None]
    w = np.linspace(1.0, -1.0, d)
    y = x @ w + np.einsum("nd,nd->n", x, dev[code]) + noise * rng.normal(size=len(x))
    return build(x, code, y[:, None], n_groups or g)


def build(x, code, y, n_groups):
    d = x.shape[1]
    model = groups.grouped(models.linear(d, 1), n_groups)
    p0 = groups.with_alpha(model.init(None), groups.residual_alpha(x, y))
    reg = groups.hierarchy(p0, regularizers.l2_weights(p0["shared"]))
    stats = models.Standardizer(jnp.zeros(d + 1), jnp.ones(d + 1))
    prob = objective.Problem(model, losses.squared, reg, stats)
    data = objective.make_data(np.c_[x, code].astype(np.float32), y.astype(np.float32))
    return prob, data, p0


def fd_tangent(prob, data, s, theta, delta=1e-3):
    hi, g1 = minimize64(prob, data, s + delta, theta)
    lo, g2 = minimize64(prob, data, s - delta, theta)
    assert max(g1, g2) < 1e-9
    return (_flat(hi) - _flat(lo)) / (2 * delta)


@pytest.fixture(scope="module")
def case():
    prob, data, p0 = grouped_problem(np.random.default_rng(0))
    s = 2.0
    theta, gnorm = minimize64(prob, data, s, p0)
    assert gnorm < 1e-9
    return prob, data, p0, s, theta, fd_tangent(prob, data, s, theta)


def test_sgdf_tangent_matches_finite_differences(case):
    """Adam SGDF from the cold start, the tangent carried by the optimizer step as for any model."""
    prob, data, p0, s, theta, fd = case
    cfg = sgdf.TrainConfig(optimizer="adam", lr=0.02, epochs=1500, batch_size=60)
    state, _ = sgdf.fit(prob, data, s, cfg, params=p0)
    assert cosine(_flat(state.tangent), fd) >= 0.999
    assert tangents.relative_residual(prob, state.params, state.tangent, s, data) < 0.05
    assert rel_err(_flat(tangents.exact(prob, theta, s, data).tangent), fd) < 1e-3


def rho_of(prob, params, s):
    """ρ = ∂²(s R)/∂θ∂s by autodiff of the regularizer alone (no formula of ours), in float64: the
    per-group term enters s R as s · (term / s), whose s-derivative is zero only up to rounding."""
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        grad = lambda t: jax.grad(lambda p: t * prob.reg.value(p, t))(p64)  # noqa: E731
        rho = jax.jvp(grad, (jnp.float64(s),), (jnp.float64(1.0),))[1]
        return jax.tree_util.tree_map(np.asarray, rho)


def test_rho_is_nonzero_only_at_the_c_entries_of_the_hierarchy(rng):
    """Eq 100: in the per-group block ρ lives on the c_i alone (2c_i/α per unit of c, so 2c_i²/α per
    unit of γ = log c); beside it, the shared weights' usual l2 gives 2w and the biases nothing."""
    prob, _, p0 = grouped_problem(rng)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), p0)
    params = groups.with_alpha(params, 0.7)
    rho = rho_of(prob, params, 1.3)
    c = np.exp(np.asarray(params["groups"]["log_c"]))
    np.testing.assert_allclose(rho["groups"]["log_c"], 2 * c * c / 0.7, rtol=1e-5)
    for key in ("dw", "db"):
        np.testing.assert_allclose(rho["groups"][key], 0.0, atol=1e-12)
    assert float(rho["alpha"]) == 0.0 and not np.any(rho["shared"]["b"])
    np.testing.assert_allclose(rho["shared"]["w"], 2 * params["shared"]["w"], rtol=1e-6)


def _frozen(prob, theta, keep):
    """The problem over the parameters for which ``keep(path)`` is false, the rest held at θ."""
    flat, unravel = ravel_pytree(theta)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(theta)]
    fixed = {k: v for k, v in zip(paths, jax.tree_util.tree_leaves(theta)) if keep(k)}

    def merge(free):
        def pick(path, leaf):
            k = jax.tree_util.keystr(path)
            return fixed[k] if k in fixed else free[k]

        return jax.tree_util.tree_map_with_path(pick, theta)

    free0 = {k: v for k, v in zip(paths, jax.tree_util.tree_leaves(theta)) if not keep(k)}
    model = prob.model._replace(apply=lambda p, st, x: prob.model.apply(merge(p), st, x))
    reg = prob.reg._replace(value=lambda p, s=None: prob.reg.value(merge(p), s))
    return prob._replace(model=model, reg=reg), free0, merge


def _dR_dc(prob, params, s):
    """∂(s R)/∂c_j for every group, by autodiff through γ = log c (∂/∂c = ∂/∂γ / c)."""
    g = jax.grad(lambda p: s * prob.reg.value(p, s))(params)["groups"]["log_c"]
    return np.asarray(g, np.float64) / np.exp(np.asarray(params["groups"]["log_c"], np.float64))


def _dR_ds(prob, params, s):
    """∂(s R)/∂s at fixed θ, by autodiff: Σc²/α plus the shared weights' R."""
    return float(jax.grad(lambda t: t * prob.reg.value(params, t))(jnp.float64(s)))


def upweighted_changes(prob, data, s, theta, row, freeze, eps=1e-3):
    """(d(∂R/∂c_j)/dε per group j, d(∂R/∂s)/dε): retrain with row's weight moved by ±ε, holding c
    (and ``freeze``); central differences of the two derivatives of s R at the retrained θ."""
    restricted, free0, merge = _frozen(prob, theta, lambda k: "log_c" in k or freeze(k))
    dc, ds = [], []
    for e in (eps, -eps):
        w = np.asarray(data.w, np.float64).copy()
        w[row] += e
        fit, gnorm = minimize64(restricted, data._replace(w=jnp.asarray(w)), s, free0)
        assert gnorm < 1e-10
        with jax.enable_x64(True):
            dc.append(_dR_dc(prob, merge(fit), s))
            ds.append(_dR_ds(prob, merge(fit), s))
    return (dc[0] - dc[1]) / (2 * eps), (ds[0] - ds[1]) / (2 * eps)


def _loss_derivative(prob, theta, tangent, data, row):
    x, y = data.x[row : row + 1], data.y[row : row + 1]
    loss = lambda p: objective.per_example_loss(prob, p, x, y)[0]  # noqa: E731
    return float(_flat(jax.grad(loss)(theta)) @ _flat(tangent))


@pytest.mark.parametrize("row", [3, 50])
def test_regularity_adjoint_is_the_change_of_dR_dc_under_upweighting(case, row):
    """Eq 101 + 103: ∇L(z)·θ̇ = Σ_j d(∂R/∂c_j)/dε · dc_j/ds, with ε raising z's weight in a
    retraining that holds c; the retrainings know nothing of tangents. The shared weights' l2 adds
    the one term the paper's model has not: s reaches them directly, d(∂R/∂s)/dε at fixed c."""
    prob, data, _, s, theta, _ = case
    tangent = tangents.exact(prob, theta, s, data).tangent  # the FD one is noisier than 1e-3 here
    _, dc = groups.pseudo_regularities(theta, tangent)
    terms, direct = upweighted_changes(prob, data, s, theta, row, freeze=lambda k: False)
    adjoint = _loss_derivative(prob, theta, tangent, data, row)
    assert abs(adjoint) > 1e-4
    assert terms @ dc + direct == pytest.approx(adjoint, rel=1e-3)


def test_eq102_one_group_term_when_groups_share_nothing(case):
    """Eq 102 (the paper's no-overlap case): with the shared parameters held, a point of group i
    moves only ∂R/∂c_i, and dL/ds = d(∂R/∂c_i)/dε · dc_i/ds."""
    prob, data, _, s, theta, _ = case
    shared = lambda k: "shared" in k  # noqa: E731
    restricted, free0, merge = _frozen(prob, theta, shared)
    fit, _ = minimize64(restricted, data, s, free0)
    theta = merge(fit)
    tangent = tangents.exact(restricted, fit, s, data).tangent
    full_tangent = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.zeros_like(a) if shared(jax.tree_util.keystr(p)) else a,
        merge(tangent),
    )
    row, group = 50, 3
    _, dc = groups.pseudo_regularities(theta, full_tangent)
    terms, _ = upweighted_changes(prob, data, s, theta, row, freeze=shared)
    others = np.delete(terms, group)
    assert np.max(np.abs(others)) < 1e-6 * abs(terms[group])
    adjoint = _loss_derivative(prob, theta, full_tangent, data, row)
    assert terms[group] * dc[group] == pytest.approx(adjoint, rel=1e-3)


def test_group_needing_large_deviations_gets_smaller_c(rng):
    prob, data, p0 = grouped_problem(rng, spread=(0.0, 0.0, 2.0, 2.0), per=30)
    theta, _ = minimize64(prob, data, 0.5, p0)
    c, _ = groups.pseudo_regularities(theta, theta)
    assert max(c[2], c[3]) < 0.5 * min(c[0], c[1])


def test_identical_groups_reduce_to_pooled_ridge(rng):
    """The same rows in every group: the deviations are equal, their offsets zero, and the fit is
    pooled ridge with λ = s G c / (s + G c) (the shared and common parts' penalties in series)."""
    n, d, g = 20, 2, 3
    x1 = rng.normal(size=(n, d))
    y1 = x1 @ np.array([1.0, -0.5]) + 0.2 + 0.3 * rng.normal(size=n)
    x, y, code = np.tile(x1, (g, 1)), np.tile(y1, g)[:, None], np.repeat(np.arange(g), n)
    prob, data, p0 = build(x, code, y, g)
    s = 3.0
    theta, _ = minimize64(prob, data, s, p0)
    c = np.exp(theta["groups"]["log_c"])
    np.testing.assert_allclose(c, c[0], rtol=1e-6)
    np.testing.assert_allclose(theta["groups"]["db"], 0.0, atol=1e-7)
    lam = s * g * c[0] / (s + g * c[0])
    a = np.c_[x, np.ones(len(x))]
    ridge = np.linalg.solve(a.T @ a + lam * np.diag([1.0] * d + [0.0]), a.T @ y)
    pred = np.asarray(prob.model.apply(theta, prob.stats, data.x), np.float64)
    np.testing.assert_allclose(pred, a @ ridge, atol=1e-6)


def test_unseen_group_sits_at_the_prior(rng):
    """A group without rows: θ_Mi = 0, c at √(|M|/4s), and dc/ds = −c/(2s) (closed form)."""
    prob, data, p0 = grouped_problem(rng, spread=(0.5, 1.0), n_groups=3)
    s = 0.8
    start = groups.at_prior(p0, s, np.asarray(data.x[:, -1]))
    assert float(start["groups"]["log_c"][2]) == pytest.approx(np.log(np.sqrt(3 / (4 * s))))
    theta, _ = minimize64(prob, data, s, start)
    tangent = tangents.exact(prob, theta, s, data).tangent
    c, dc = groups.pseudo_regularities(theta, tangent)
    assert c[2] == pytest.approx(np.sqrt(3 / (4 * s)), rel=1e-6)
    assert dc[2] == pytest.approx(-c[2] / (2 * s), rel=1e-5)
    assert not np.any(np.abs(np.asarray(theta["groups"]["dw"][2])) > 1e-9)
    unknown = np.array([[0.3, -0.2, -1.0]], np.float32)  # code -1: a group the model does not know
    shared = models.linear(2, 1).apply(
        theta["shared"], models.identity_standardizer(2), unknown[:, :2]
    )
    np.testing.assert_allclose(prob.model.apply(theta, prob.stats, unknown), shared, rtol=1e-6)
