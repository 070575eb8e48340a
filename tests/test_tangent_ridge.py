"""Identity 1 (method.md): on ridge regression every tangent method equals −(XᵀX + sI)⁻¹θ*."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from core_helpers import cosine, flat_linear, rel_err, ridge_closed_form, ridge_problem

from alloop.core import sgdf, tangents

S = 30.0
CONFIGS = {
    "sgd": sgdf.TrainConfig(optimizer="sgd", lr=0.05, epochs=60, batch_size=32),
    "sgd-momentum": sgdf.TrainConfig(
        optimizer="sgd", lr=0.02, momentum=0.9, epochs=60, batch_size=32
    ),
    "adam": sgdf.TrainConfig(optimizer="adam", lr=0.05, epochs=60, batch_size=32),
    # the tangent iterated on every 4th step only: a quarter of the tangent steps, so twice the
    # epochs
    "adam-every-4": sgdf.TrainConfig(
        optimizer="adam", lr=0.05, epochs=120, batch_size=32, tangent_every=4
    ),
}


@pytest.fixture(scope="module")
def ridge():
    prob, data = ridge_problem(np.random.default_rng(1))
    theta, tdot = ridge_closed_form(data, S)
    return prob, data, theta, tdot


def _at_optimum(theta, d):
    return {"w": jnp.asarray(theta[:d], jnp.float32), "b": jnp.asarray(theta[d], jnp.float32)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sgdf_tangent_matches_closed_form(ridge, name):
    prob, data, theta, tdot = ridge
    state, reports = sgdf.fit(prob, data, S, CONFIGS[name])
    assert rel_err(flat_linear(state.params), theta) < 5e-3
    assert cosine(flat_linear(state.tangent), tdot) >= 0.999
    assert rel_err(flat_linear(state.tangent), tdot) < 0.05
    assert tangents.relative_residual(prob, state.params, state.tangent, S, data) < 0.1


@pytest.mark.parametrize("method", ["exact", "cg"])
def test_solvers_match_closed_form(ridge, method):
    prob, data, theta, tdot = ridge
    params = _at_optimum(theta, data.x.shape[1])
    res = getattr(tangents, method)(prob, params, S, data)
    assert rel_err(flat_linear(res.tangent), tdot) < 1e-6
    assert res.residual < 1e-6


def test_multi_output_ridge(rng):
    prob, data = ridge_problem(rng, k=2)
    theta, tdot = ridge_closed_form(data, S)
    res = tangents.exact(prob, _at_optimum(theta, data.x.shape[1]), S, data)
    assert rel_err(flat_linear(res.tangent), tdot.ravel()) < 1e-6
    state, _ = sgdf.fit(prob, data, S, CONFIGS["adam"])
    assert cosine(flat_linear(state.tangent), tdot) >= 0.999


# --- mutations: a wrong tangent must fail the same checks -------------------------------------


def _wrong(kind, t):
    return {"zero": 0.0 * t, "flip": -t}[kind]


@pytest.mark.parametrize("kind", ["zero", "flip"])
def test_wrong_tangent_fails_identity(ridge, kind):
    prob, data, theta, tdot = ridge
    params = _at_optimum(theta, data.x.shape[1])
    good = tangents.exact(prob, params, S, data).tangent
    bad = {k: _wrong(kind, np.asarray(v)) for k, v in good.items()}
    assert not (cosine(flat_linear(bad), tdot) >= 0.999)
    assert rel_err(flat_linear(bad), tdot) >= 1.0 - 1e-6
    assert tangents.relative_residual(prob, params, bad, S, data) >= 1.0 - 1e-4


def test_missing_rho_fails_identity(ridge, monkeypatch):
    """SGDF with the s-direction dropped (no ρ in the tangent update) never finds the tangent."""
    prob, data, theta, tdot = ridge
    monkeypatch.setattr(sgdf, "_s_direction", lambda s: jnp.zeros_like(s))
    state, _ = sgdf.fit(prob, data, S, CONFIGS["sgd"])
    assert not cosine(flat_linear(state.tangent) + 1e-30, tdot) >= 0.999
    assert tangents.relative_residual(prob, state.params, state.tangent, S, data) >= 0.99
