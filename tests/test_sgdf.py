"""The training contract of SGDF (alloop.core.sgdf): the loss falls, a seed fixes the result bit for
bit, a resumed training repeats an uninterrupted one, a warm start keeps the tangent; with and
without jit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from core_helpers import cosine, flat_linear, ridge_closed_form, ridge_problem
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers, sgdf

S = 30.0
RIDGE_CFG = sgdf.TrainConfig(optimizer="adam", lr=0.05, epochs=60, batch_size=32)


def _leaves(state: sgdf.TrainState) -> list[np.ndarray]:
    return [
        np.asarray(a)
        for a in jax.tree_util.tree_leaves(
            (state.params, state.tangent, state.opt_state, state.opt_tangent)
        )
    ]


def _same_bits(a: sgdf.TrainState, b: sgdf.TrainState) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb)
    )


def _tiny_mlp(rng, n=16):
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = np.tanh(x[:, :1] - x[:, 1:]).astype(np.float32)
    model = models.mlp(2, 1, hidden=(3,), activation="tanh")
    p0 = model.init(jax.random.PRNGKey(0))
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(p0),
        models.identity_standardizer(2),
        *objective.default_curvature("mlp"),
    )
    return prob, objective.make_data(x, y)


@pytest.fixture(scope="module")
def ridge():
    prob, data = ridge_problem(np.random.default_rng(1))
    return prob, data, ridge_closed_form(data, S)[1]


@pytest.fixture(scope="module")
def ridge_run(ridge):
    prob, data, _ = ridge
    mid = {}

    def keep(state, rep):
        if rep.epoch == 24:
            mid["state"] = state

    state, reports = sgdf.fit(prob, data, S, RIDGE_CFG, on_epoch=keep)
    return state, reports, mid["state"]


@pytest.mark.parametrize("every", [0, 1, 3])
def test_loss_falls(ridge, every):
    prob, data, _ = ridge
    cfg = sgdf.TrainConfig(optimizer="adam", lr=0.05, epochs=10, batch_size=32, tangent_every=every)
    _, reports = sgdf.fit(prob, data, S, cfg)
    assert [r.epoch for r in reports] == list(range(10))
    assert reports[-1].loss < 0.2 * reports[0].loss
    assert all(np.isfinite([r.loss for r in reports]))


def test_same_seed_same_bits(ridge, ridge_run):
    prob, data, _ = ridge
    again, _ = sgdf.fit(prob, data, S, RIDGE_CFG)
    assert _same_bits(ridge_run[0], again)
    other, _ = sgdf.fit(prob, data, S, sgdf.TrainConfig(**{**RIDGE_CFG.to_dict(), "seed": 1}))
    assert not _same_bits(ridge_run[0], other)  # the seed does reach the minibatch order


def test_resume_repeats_an_uninterrupted_run(ridge, ridge_run):
    prob, data, _ = ridge
    full, full_reports, mid = ridge_run
    resumed, reports = sgdf.fit(prob, data, S, RIDGE_CFG, state=mid, start_epoch=25)
    assert [r.epoch for r in reports] == list(range(25, 60))
    assert _same_bits(full, resumed)
    assert [r.loss for r in reports] == [r.loss for r in full_reports[25:]]
    off_by_one, _ = sgdf.fit(prob, data, S, RIDGE_CFG, state=mid, start_epoch=24)
    assert not _same_bits(full, off_by_one)


@pytest.mark.parametrize("keep_tangent", [True, False])
def test_warm_start_keeps_the_tangent(ridge, ridge_run, keep_tangent):
    """A converged run continued for a few epochs with a fresh optimizer keeps θ̇ (but only if it is
    passed on)."""
    prob, data, tdot = ridge
    state = ridge_run[0]
    assert cosine(flat_linear(state.tangent), tdot) >= 0.999
    more = sgdf.TrainConfig(optimizer="adam", lr=1e-3, epochs=2, batch_size=32, seed=7)
    cont, _ = sgdf.fit(
        prob, data, S, more, params=state.params, tangent=state.tangent if keep_tangent else None
    )
    kept = (
        cosine(flat_linear(cont.tangent), tdot) >= 0.999
        and cosine(flat_linear(cont.tangent), flat_linear(state.tangent)) >= 0.999
    )
    assert kept == keep_tangent


def test_same_result_with_and_without_jit():
    prob, data = _tiny_mlp(np.random.default_rng(0), n=8)
    cfg = sgdf.TrainConfig(optimizer="adam", lr=0.1, epochs=3, batch_size=4, tangent_every=2)
    jitted, rep_jit = sgdf.fit(prob, data, 0.5, cfg)
    with jax.disable_jit():
        eager, rep_eager = sgdf.fit(prob, data, 0.5, cfg)
    assert rep_eager[-1].loss < rep_eager[0].loss
    assert int(eager.step) == int(jitted.step) == 3 * 2
    for a, b in zip(_leaves(jitted), _leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert (
        np.abs(ravel_pytree(jitted.tangent)[0]).max() > 1e-4
    )  # the tangent moved: the comparison is not vacuous


def test_scaled_tangent_steps_keep_theta_and_speed_up_the_tangent(ridge):
    """tangent_scaled changes only the tangent: θ is bit-identical, and with k = 4 the scaled
    tangent ends closer to the closed form than the unscaled one (it makes up for the skipped
    steps)."""
    prob, data, tdot = ridge
    cfg = sgdf.TrainConfig(optimizer="sgd", lr=0.05, epochs=60, batch_size=32, tangent_every=4)
    plain, _ = sgdf.fit(prob, data, S, cfg)
    scaled, _ = sgdf.fit(
        prob, data, S, sgdf.TrainConfig(**{**cfg.to_dict(), "tangent_scaled": True})
    )
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(scaled.params)
        )
    )
    c_plain, c_scaled = (cosine(flat_linear(st.tangent), tdot) for st in (plain, scaled))
    assert c_scaled > c_plain + 1e-3 and c_scaled > 0.997
