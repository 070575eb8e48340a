"""The full-batch second-order trainers reach the ridge closed form, and their tangent is exact."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from core_helpers import cosine, flat_linear, rel_err, ridge_closed_form, ridge_problem

from alloop.core import losses, models, objective, regularizers, second_order, sgdf

S = 30.0


@pytest.fixture(scope="module")
def ridge():
    prob, data = ridge_problem(np.random.default_rng(4), n=60)
    theta, tdot = ridge_closed_form(data, S)
    return prob, data, theta, tdot


@pytest.mark.parametrize("method", ["newton", "lbfgs", "cg"])
def test_second_order_matches_ridge_closed_form(ridge, method):
    prob, data, theta, tdot = ridge
    res = second_order.fit(prob, data, S, prob.model.init(None), method=method)
    assert res.grad_norm < 1e-8
    assert rel_err(flat_linear(res.params), theta) < 1e-6
    assert rel_err(flat_linear(res.tangent), tdot) < 1e-6
    assert res.residual < 1e-6


def test_second_order_tangent_agrees_with_sgdf(ridge):
    prob, data, _, _ = ridge
    res = second_order.fit(prob, data, S, prob.model.init(None), method="newton")
    state, _ = sgdf.fit(
        prob, data, S, sgdf.TrainConfig(optimizer="adam", lr=0.05, epochs=150, batch_size=16)
    )
    assert cosine(flat_linear(res.tangent), flat_linear(state.tangent)) >= 0.999


def test_newton_handles_a_nonconvex_mlp():
    """Damped Newton reaches a stationary point of an MLP objective from a random start."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(30, 1)).astype(np.float32)
    y = np.sin(2 * x).astype(np.float32)
    model = models.mlp(1, 1, hidden=(5,), activation="tanh")
    p0 = model.init(jax.random.PRNGKey(0))
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2(jax.tree_util.tree_map(np.ones_like, p0)),
        models.identity_standardizer(1),
    )
    res = second_order.fit(prob, objective.make_data(x, y), 0.1, p0, method="newton")
    assert res.grad_norm < 1e-6
    assert np.isfinite(res.residual)
