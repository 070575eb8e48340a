"""Curvature choices for non-convex models (docs/curvature.md) and the detection of a diverging
tangent."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_helpers import rel_err, ridge_problem
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers, sgdf, tangents

S = 0.1


def _flat(tree) -> np.ndarray:
    return np.asarray(
        ravel_pytree(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree))[0]
    )


def _dense_curvature(prob, params, s, data) -> np.ndarray:
    """The curvature matrix of f/n that ``prob`` defines (Hessian or Gauss-Newton, damping
    included), float64."""
    with jax.enable_x64(True):
        pr, p, s_, d = tangents._promote(prob, params, s, data, jnp.float64)
        flat, unravel = ravel_pytree(p)
        hess = jax.jit(
            jax.jacfwd(lambda f, s_, d: ravel_pytree(tangents.gradient(pr, unravel(f), s_, d))[0])
        )
        return np.asarray(hess(flat, s_, d))


@pytest.fixture(scope="module")
def saddle():
    """A tanh MLP after 50 epochs of Adam (seeded, so the point is fixed): its Hessian is indefinite
    there."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(32, 2)).astype(np.float32)
    y = (np.sin(2 * x[:, :1]) * x[:, 1:] + 0.1 * rng.normal(size=(32, 1))).astype(np.float32)
    model = models.mlp(2, 1, hidden=(6,), activation="tanh")
    p0 = model.init(jax.random.PRNGKey(0))
    reg = regularizers.l2(jax.tree_util.tree_map(np.ones_like, p0))
    prob = objective.Problem(model, losses.squared, reg, models.identity_standardizer(2))
    data = objective.make_data(x, y)
    state, _ = sgdf.fit(
        prob,
        data,
        S,
        sgdf.TrainConfig(optimizer="adam", lr=0.03, epochs=50, batch_size=8, tangent_every=0),
    )
    return prob, data, state.params


def test_default_curvature():
    assert objective.default_curvature("linear") == ("hessian", 0.0)
    assert objective.default_curvature("poly") == ("hessian", 0.0)
    curvature, damping = objective.default_curvature("mlp")
    assert curvature == "gauss-newton" and damping > 0
    with pytest.raises(ValueError):
        objective.default_curvature("forest")


def test_gauss_newton_tangent_is_well_defined_where_the_hessian_is_indefinite(saddle):
    prob, data, params = saddle
    hess = _dense_curvature(prob, params, S, data)
    assert np.linalg.eigvalsh(hess)[0] < -1e-2  # the premise: negative curvature at this θ
    assert (
        tangents.cg(prob, params, S, data, maxiter=200).residual > 1e-2
    )  # CG on H breaks down here

    gn = prob._replace(curvature="gauss-newton", damping=objective.default_curvature("mlp")[1])
    assert np.linalg.eigvalsh(_dense_curvature(gn, params, S, data))[0] > 0
    res = tangents.cg(gn, params, S, data, maxiter=200)
    assert res.residual < 1e-8 and res.iterations < 200
    assert rel_err(_flat(res.tangent), _flat(tangents.exact(gn, params, S, data).tangent)) < 1e-5
    assert tangents.relative_residual(gn, params, res.tangent, S, data) < 1e-4


@pytest.mark.parametrize(
    "loss,k", [(losses.squared, 2), (losses.softmax_cross_entropy, 3), (losses.binary_logistic, 1)]
)
@pytest.mark.parametrize(
    "curvature,damping", [("hessian", 0.0), ("gauss-newton", 0.0), ("gauss-newton", 0.3)]
)
def test_fused_gradient_tangent_is_the_derivative_of_the_objective(loss, k, curvature, damping):
    """SGDF's one-pass (g, ġ) equals the forward derivative of ∇(f_B/n) along (θ̇, ds = 1), for
    every curvature."""
    rng = np.random.default_rng(1)
    model = models.mlp(3, k, hidden=(5, 4), activation="tanh")
    params = model.init(jax.random.PRNGKey(0))
    tangent = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params
    )
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = (
        rng.normal(size=(7, k)).astype(np.float32)
        if loss.name == "squared"
        else rng.integers(0, k, size=7)
    )
    batch = objective.make_data(x, y, rng.uniform(0.5, 2.0, size=7))
    prob = objective.Problem(
        model,
        loss,
        regularizers.l2_weights(params),
        models.identity_standardizer(3),
        curvature,
        damping,
    )
    s = jnp.float32(2.0)
    grad = lambda p, s_: jax.grad(objective.batch_objective, argnums=1)(prob, p, s_, batch, 20)  # noqa: E731
    g_ref, gdot_ref = jax.jit(lambda p, t, s_: jax.jvp(grad, (p, s_), (t, jnp.float32(1.0))))(
        params, tangent, s
    )
    _, g, gdot = jax.jit(
        lambda p, t, s_: objective.grad_and_tangent(prob, p, t, s_, 1.0, batch, 20)
    )(params, tangent, s)
    np.testing.assert_allclose(_flat(g), _flat(g_ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_flat(gdot), _flat(gdot_ref), rtol=1e-5, atol=1e-5)


# --- divergence detection ------------------------------------------------------------------------


def _unstable(damping: float, epochs: int):
    """Ridge with a negative damping: curvature − |λ|I in the tangent's iteration only (θ trains as
    usual)."""
    prob, data = ridge_problem(np.random.default_rng(1))
    cfg = sgdf.TrainConfig(
        optimizer="sgd", lr=0.05, epochs=epochs, batch_size=32, schedule="constant"
    )
    return sgdf.fit(prob._replace(damping=damping), data, 30.0, cfg)


def test_stable_setting_has_no_warning():
    state, reports = _unstable(0.0, 30)
    assert sgdf.tangent_warnings(reports) == []
    assert np.isfinite(reports[-1].tangent_norm)


def test_growing_tangent_is_reported():
    state, reports = _unstable(-1.0, 30)
    norms = [r.tangent_norm for r in reports]
    assert np.all(np.isfinite(norms)) and norms[-1] > 3 * norms[len(norms) // 2]
    warnings = sgdf.tangent_warnings(reports)
    assert len(warnings) == 1 and "grew" in warnings[0]


def test_non_finite_tangent_is_reported_though_training_is_fine():
    state, reports = _unstable(-200.0, 10)
    assert np.all(np.isfinite([r.loss for r in reports]))  # θ and the loss are untouched ...
    assert not np.all(np.isfinite(_flat(state.tangent)))  # ... while the tangent overflowed
    assert not np.isfinite(reports[-1].tangent_norm)
    warnings = sgdf.tangent_warnings(reports)
    assert any("non-finite" in w for w in warnings)


def test_non_finite_residual_is_reported():
    reports = [sgdf.EpochReport(e, 1.0, 1.0) for e in range(12)]
    assert sgdf.tangent_warnings(reports, residual=0.1) == []
    assert any("residual" in w for w in sgdf.tangent_warnings(reports, residual=float("nan")))
    assert any("residual" in w for w in sgdf.tangent_warnings(reports, residual=0.9))


def test_huge_finite_tangent_is_not_called_non_finite():
    """The norm is taken in float64: squares of float32 values above ~1e19 would overflow to inf."""
    norm = sgdf.tree_norm(
        {"w": np.full((4,), 1e30, np.float32), "b": jnp.full((1,), 1e30, jnp.float32)}
    )
    assert np.isfinite(norm) and norm == pytest.approx(np.sqrt(5) * 1e30, rel=1e-6)
    assert not np.isfinite(sgdf.tree_norm({"w": np.array([1.0, np.nan], np.float32)}))
