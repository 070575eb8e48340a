"""Identities 3, 4 and 6 of method.md: duality, total influence, and SGDF with θ frozen = LiSSA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_helpers import minimize64, ridge_problem
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers, scorers, tangents


def _poly_problem(rng, n=30):
    x = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
    y = (np.cos(3 * x) + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    model = models.poly(1, 1, degree=4)
    p0 = model.init(None)
    prob = objective.Problem(
        model, losses.squared, regularizers.l2_weights(p0), models.identity_standardizer(1)
    )
    return prob, x, y, p0


def _mlp_problem(rng, n=40):
    x = rng.uniform(-2, 2, size=(n, 2)).astype(np.float32)
    y = (np.sin(x[:, :1]) * x[:, 1:] + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    model = models.mlp(2, 1, hidden=(5,), activation="softplus")
    p0 = model.init(jax.random.PRNGKey(1))
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2(jax.tree_util.tree_map(np.ones_like, p0)),
        models.identity_standardizer(2),
    )
    return prob, x, y, p0


@pytest.mark.parametrize("make", [_poly_problem, _mlp_problem])
def test_duality_loss_derivative_is_complexity_change(make):
    """∇L(z)·θ̇ = dR(θ*)/dε when z's weight is raised by ε (eq. 70), by re-weighted retraining."""
    rng = np.random.default_rng(5)
    prob, x, y, p0 = make(rng)
    s = 0.3
    xz = np.full((1, x.shape[1]), 0.7, np.float32)
    yz = np.array([[1.5]], np.float32)
    xa, ya = np.r_[x, xz], np.r_[y, yz]
    base = objective.make_data(x, y)
    theta, _ = minimize64(prob, base, s, p0)
    tdot = tangents.exact(prob, theta, s, base).tangent
    predicted = float(
        scorers.loss_derivative(prob, theta, tdot, jnp.asarray(xz), jnp.asarray(yz))[0]
    )

    eps = 1e-3
    r = []
    for e in (eps, -eps):
        w = np.r_[np.ones(len(x)), e].astype(np.float32)
        th_e, g = minimize64(prob, objective.make_data(xa, ya, w), s, theta)
        assert g < 1e-9
        with jax.enable_x64(True):
            r.append(float(prob.reg.value(jax.tree_util.tree_map(jnp.asarray, th_e))))
    observed = (r[0] - r[1]) / (2 * eps)
    assert abs(observed) > 1e-3
    assert observed == pytest.approx(predicted, rel=2e-3)
    assert not (-predicted == pytest.approx(observed, rel=0.5))  # a flipped tangent fails


def _flat(t):
    return np.asarray(
        ravel_pytree(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), t))[0]
    )


def test_total_influence_equals_s_squared_times_labeled_sld():
    """(Σ_i ∇L(z_i)ᵀ H⁻¹ ∇L(z))² = s² (∇L(z)·θ̇)², because Σ_i ∇L(z_i) = −sρ at the optimum
    (59–63)."""
    rng = np.random.default_rng(7)
    prob, x, y, p0 = _mlp_problem(rng)
    s = 0.4
    data = objective.make_data(x, y)
    theta, _ = minimize64(prob, data, s, p0)
    tdot = _flat(tangents.exact(prob, theta, s, data).tangent)
    with jax.enable_x64(True):
        th = jax.tree_util.tree_map(jnp.asarray, theta)
        flat, unravel = ravel_pytree(th)
        xs, ys = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        stats = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), prob.stats)
        loss_i = lambda f, xi, yi: jnp.sum(
            (prob.model.apply(unravel(f), stats, xi[None]) - yi[None]) ** 2
        )  # noqa: E731
        grads = jax.vmap(jax.grad(loss_i), (None, 0, 0))(flat, xs, ys)
        f_total = lambda f: (
            jnp.sum(jax.vmap(loss_i, (None, 0, 0))(f, xs, ys)) + s * prob.reg.value(unravel(f))
        )  # noqa: E731
        hess = np.asarray(jax.hessian(f_total)(flat))
        rho = np.asarray(jax.grad(lambda f: prob.reg.value(unravel(f)))(flat))
        total_grad = np.asarray(grads).sum(0)
        np.testing.assert_allclose(total_grad, -s * rho, atol=1e-7)
        zs = rng.uniform(-2, 2, size=(5, 2))
        for xz in zs:
            yz = 0.3
            gz = np.asarray(jax.grad(loss_i)(flat, jnp.asarray(xz), jnp.asarray([yz])))
            total_influence = total_grad @ np.linalg.solve(hess, gz)
            labeled = gz @ tdot
            assert total_influence**2 == pytest.approx(s**2 * labeled**2, rel=2e-5)


def test_sgdf_with_frozen_theta_is_lissa():
    """Identity 6: the frozen-θ SGDF tangent iterates equal −η h_t of LiSSA h ← ρ_B + (I − ηH_B)
    h."""
    rng = np.random.default_rng(2)
    prob, data = ridge_problem(rng, n=64, d=3)
    s, lr, n = 20.0, 0.01, 64
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 1)), jnp.float32),
        "b": jnp.asarray([0.2], jnp.float32),
    }
    batches = np.stack([rng.permutation(n)[:16] for _ in range(25)])
    iterates = tangents.lissa(prob, params, s, data, batches, lr)

    # textbook LiSSA on f/n with explicit matrices (numpy, float64)
    x = np.c_[np.asarray(data.x, np.float64), np.ones(n)]
    dmat = np.diag([1.0, 1.0, 1.0, 0.0])
    theta = np.r_[np.asarray(params["w"], np.float64).ravel(), 0.2]
    rho = 2 * dmat @ theta / n  # ∂²(f/n)/∂θ∂s = ∇R / n
    h = np.zeros(4)
    for b, it in zip(batches, iterates):
        hb = 2 * x[b].T @ x[b] / len(b) + 2 * (s / n) * dmat
        h = rho + (np.eye(4) - lr * hb) @ h
        got = np.r_[it["w"].ravel(), it["b"]]
        np.testing.assert_allclose(got, -lr * h, rtol=2e-4, atol=1e-9)
