"""Parameter inheritance (paper §3.4.1): a user model anchored to a base model that moves with s.

θ̇ = (dθ/dθ0)·θ̇0 + ∂θ/∂s (eq. 98) comes out of forward-mode differentiation because the anchor is
θ0(s) = θ0 + (s − s0)θ̇0; it is checked against finite differences of the whole pipeline (retrain the
base at s±δ, then the user at s±δ), with float64 L-BFGS retraining that knows nothing of tangents.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_helpers import cosine, minimize64, rel_err

from alloop.core import losses, models, objective, regularizers, second_order, sgdf, tangents

S = 2.0


def _flat(t):
    """float64 flattening (jax's ravel_pytree would round to float32 outside x64 mode)."""
    return np.concatenate(
        [np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(t)]
    )


def _setup():
    rng = np.random.default_rng(11)
    model = models.poly(2, 1, degree=2)
    p0 = model.init(None)
    stats = models.identity_standardizer(2)
    xb = rng.normal(size=(80, 2)).astype(np.float32)
    yb = (
        xb @ np.array([[1.0], [-1.0]]) + 0.3 * xb[:, :1] ** 2 + 0.1 * rng.normal(size=(80, 1))
    ).astype(np.float32)
    xu = rng.normal(size=(6, 2)).astype(np.float32)
    yu = (xu @ np.array([[1.5], [-0.5]]) + 0.2).astype(np.float32)
    base = objective.Problem(model, losses.squared, regularizers.l2_weights(p0), stats)
    return model, p0, stats, objective.make_data(xb, yb), objective.make_data(xu, yu), base


def _user_problem(model, stats, theta0, theta0_dot, s0):
    return objective.Problem(
        model, losses.squared, regularizers.inherited_anchor(theta0, theta0_dot, s0), stats
    )


class Inherited(NamedTuple):
    model: object
    p0: object
    stats: object
    base_data: objective.Data
    user_data: objective.Data
    base: objective.Problem
    theta0: object  # the base trained at S (float64 L-BFGS)
    theta0_dot: object  # its exact tangent
    user: objective.Problem  # the user problem anchored to θ0(s) = θ0 + (s − S) θ̇0


@pytest.fixture(scope="module")
def inherited() -> Inherited:
    """The base trained once for every test here, and the user problem inheriting from it."""
    model, p0, stats, base_data, user_data, base = _setup()
    theta0, _ = minimize64(base, base_data, S, p0)
    theta0_dot = tangents.exact(base, theta0, S, base_data).tangent
    return Inherited(
        model,
        p0,
        stats,
        base_data,
        user_data,
        base,
        theta0,
        theta0_dot,
        _user_problem(model, stats, theta0, theta0_dot, S),
    )


def test_no_user_labels_inherits_the_base_tangent_exactly(inherited):
    user, theta0, theta0_dot = inherited.user, inherited.theta0, inherited.theta0_dot
    empty = objective.Data(jnp.zeros((0, 2)), jnp.zeros((0, 1)), jnp.zeros((0,)))
    # f = s||θ − θ0(s)||²: θ* = θ0, and its tangent is θ̇0 exactly
    one = objective.make_data(np.zeros((1, 2)), np.zeros((1, 1)), w=np.zeros(1))
    res = tangents.exact(user, theta0, S, one)
    np.testing.assert_allclose(_flat(res.tangent), _flat(theta0_dot), rtol=1e-6, atol=1e-9)
    assert empty.x.shape[0] == 0


def test_inherited_tangent_matches_finite_differences_of_the_pipeline(inherited):
    model, p0, stats, base_data, user_data, base, theta0, _, user = inherited
    res = second_order.fit(user, user_data, S, theta0, method="newton")
    assert res.grad_norm < 1e-8

    delta = 1e-3
    ends = []
    for s in (S + delta, S - delta):
        b, _ = minimize64(base, base_data, s, p0)
        plain = objective.Problem(model, losses.squared, regularizers.anchor(b), stats)
        u, g = minimize64(plain, user_data, s, b)
        assert g < 1e-9
        ends.append(_flat(u))
    fd = (ends[0] - ends[1]) / (2 * delta)
    assert rel_err(_flat(res.tangent), fd) < 1e-4
    # without the base's tangent (a fixed anchor) the identity fails
    fixed = objective.Problem(model, losses.squared, regularizers.anchor(theta0), stats)
    wrong = tangents.exact(fixed, res.params, S, user_data).tangent
    assert rel_err(_flat(wrong), fd) > 0.1


def test_sgdf_carries_the_inherited_tangent(inherited):
    user, user_data, theta0, theta0_dot = (
        inherited.user,
        inherited.user_data,
        inherited.theta0,
        inherited.theta0_dot,
    )
    ref = second_order.fit(user, user_data, S, theta0, method="newton")
    cfg = sgdf.TrainConfig(optimizer="adam", lr=0.02, epochs=2000, batch_size=6)
    state, _ = sgdf.fit(user, user_data, S, cfg, params=theta0, tangent=theta0_dot)
    assert cosine(_flat(state.tangent), _flat(ref.tangent)) >= 0.999


def test_users_simulation_closed_forms_agree_with_the_trainer():
    """sim_users solves linear models in closed form: the same θ and θ̇ as second_order + inherited_anchor."""
    import jax.numpy as jnp

    from alloop.sim import users as sim_users

    rng = np.random.default_rng(3)
    xb, yb = rng.normal(size=(40, 2)), rng.normal(size=40)
    xu, yu = rng.normal(size=(5, 2)), rng.normal(size=5)
    base = sim_users.fit_l2(xb, yb, S)
    user = sim_users.fit_inherited(xu, yu, S, base)
    model = models.linear(2, 1)
    as_tree = lambda v: {
        "w": jnp.asarray(v[:2, None], jnp.float32),
        "b": jnp.asarray(v[2:], jnp.float32),
    }  # noqa: E731
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.inherited_anchor(as_tree(base.theta), as_tree(base.tangent), S),
        models.identity_standardizer(2),
    )
    res = second_order.fit(prob, objective.make_data(xu, yu[:, None]), S, as_tree(base.theta))
    np.testing.assert_allclose(
        np.r_[res.params["w"].ravel(), res.params["b"]], user.theta, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.r_[res.tangent["w"].ravel(), res.tangent["b"]], user.tangent, rtol=1e-4, atol=1e-6
    )


def test_users_simulation_shape(tmp_path):
    import pandas as pd

    from alloop.sim import users as sim_users

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    df = pd.DataFrame(
        {"a": x[:, 0], "b": x[:, 1], "target": x @ [1.0, 2.0] + 0.1 * rng.normal(size=300)}
    )
    cfg = sim_users.UsersConfig(groups=2, rounds=2, k=3, reps=2, base_labels=30)
    c1 = sim_users.run_users(df.iloc[:200], df.iloc[200:], ["a", "b"], "target", cfg)
    c2 = sim_users.run_users(df.iloc[:200], df.iloc[200:], ["a", "b"], "target", cfg)
    assert len(c1) == len(sim_users.VARIANTS) * 2 * 2 * 2
    assert sorted(c1["n_labels"].unique()) == [3, 6]
    pd.testing.assert_frame_equal(c1, c2)
