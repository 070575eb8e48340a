"""Identity 2 (method.md): θ̇ ≈ (θ*(s+δ) − θ*(s−δ)) / 2δ for models trained to convergence.

θ*(s±δ) come from a float64 full-batch L-BFGS run that knows nothing of tangents.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from core_helpers import cosine, minimize64, rel_err
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers, sgdf, tangents


def _flat(tree):
    return np.asarray(ravel_pytree(jax.tree_util.tree_map(np.asarray, tree))[0], np.float64)


def _fd_tangent(prob, data, s, params0, delta):
    hi, g1 = minimize64(prob, data, s + delta, params0)
    lo, g2 = minimize64(prob, data, s - delta, params0)
    assert max(g1, g2) < 1e-9
    return (_flat(hi) - _flat(lo)) / (2 * delta)


def _mlp_problem(rng, curvature="hessian"):
    x = rng.uniform(-2, 2, size=(40, 1)).astype(np.float32)
    y = (np.sin(2 * x) + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    model = models.mlp(1, 1, hidden=(6,), activation="tanh")
    params0 = model.init(jax.random.PRNGKey(0))
    # L2 on every parameter: with weights-only L2, units that die at the optimum leave their
    # biases with zero curvature, and the tangent is not defined there.
    reg = regularizers.l2(jax.tree_util.tree_map(np.ones_like, params0))
    prob = objective.Problem(
        model, losses.squared, reg, models.fit_standardizer(x.mean(0), x.std(0)), curvature
    )
    return prob, objective.make_data(x, y), params0


@pytest.fixture(scope="module")
def mlp_case():
    prob, data, params0 = _mlp_problem(np.random.default_rng(3))
    s = 0.5
    theta, gnorm = minimize64(prob, data, s, params0)
    assert gnorm < 1e-9
    fd = _fd_tangent(prob, data, s, theta, delta=1e-3)
    return prob, data, s, theta, fd


def test_exact_tangent_matches_finite_differences_on_mlp(mlp_case):
    prob, data, s, theta, fd = mlp_case
    res = tangents.exact(prob, theta, s, data)
    assert res.residual < 1e-8
    assert rel_err(_flat(res.tangent), fd) < 1e-4


def test_sgdf_tangent_matches_finite_differences_on_mlp(mlp_case):
    """SGD-based SGDF started at θ*: the tangent iteration alone, against finite differences."""
    prob, data, s, theta, fd = mlp_case
    cfg = sgdf.TrainConfig(optimizer="sgd", lr=0.2, epochs=2000, batch_size=40, schedule="constant")
    state, _ = sgdf.fit(prob, data, s, cfg, params=theta)
    assert cosine(_flat(state.tangent), fd) >= 0.999


def test_adam_sgdf_tangent_on_mlp_from_scratch(mlp_case):
    """Adam-based SGDF trained from initialization: tangent against the exact one at its own θ."""
    prob, data, s, _, _ = mlp_case
    cfg = sgdf.TrainConfig(optimizer="adam", lr=3e-2, epochs=1500, batch_size=40)
    state, _ = sgdf.fit(prob, data, s, cfg)
    ref = tangents.exact(prob, state.params, s, data)
    assert ref.residual < 1e-8
    assert cosine(_flat(state.tangent), _flat(ref.tangent)) >= 0.99
    assert tangents.relative_residual(prob, state.params, state.tangent, s, data) < 0.05


def test_sgdf_minibatch_tangent_on_poly(rng):
    """A convex degree-5 polynomial (the paper's model): minibatch SGDF against finite
    differences."""
    x = rng.uniform(-1, 1, size=(60, 1)).astype(np.float32)
    y = (x**3 - x + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    model = models.poly(1, 1, degree=5)
    params0 = model.init(None)
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(params0),
        models.fit_standardizer(x.mean(0), x.std(0)),
    )
    data = objective.make_data(x, y)
    s = 0.05
    fd = _fd_tangent(prob, data, s, params0, delta=1e-4)
    cfg = sgdf.TrainConfig(optimizer="adam", lr=0.05, epochs=300, batch_size=16)
    state, _ = sgdf.fit(prob, data, s, cfg)
    assert cosine(_flat(state.tangent), fd) >= 0.999
    wrong = -_flat(state.tangent)
    assert cosine(wrong, fd) < 0


def test_gauss_newton_equals_hessian_for_linear_models(rng):
    """With a linear-in-θ model the Gauss-Newton curvature is the Hessian: same tangent."""
    x = rng.normal(size=(50, 2)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0]]) + 0.1).astype(np.float32)
    model = models.poly(2, 1, degree=2)
    p0 = model.init(None)
    data = objective.make_data(x, y)
    h = objective.Problem(
        model, losses.squared, regularizers.l2_weights(p0), models.identity_standardizer(2)
    )
    theta, _ = minimize64(h, data, 1.0, p0)
    t_h = tangents.exact(h, theta, 1.0, data).tangent
    t_g = tangents.exact(h._replace(curvature="gauss-newton"), theta, 1.0, data).tangent
    assert rel_err(_flat(t_g), _flat(t_h)) < 1e-6
