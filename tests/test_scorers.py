"""Identity 5 (unlabeled SLD = Monte-Carlo mean of labeled SLD) and the scorer contracts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alloop.core import losses, models, objective, regularizers, scorers


def _problem(loss, k, rng):
    model = models.mlp(3, k, hidden=(4,), activation="tanh")
    params = model.init(jax.random.PRNGKey(0))
    tangent = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params
    )
    prob = objective.Problem(
        model, loss, regularizers.l2_weights(params), models.identity_standardizer(3)
    )
    return prob, params, tangent


@pytest.mark.parametrize(
    "loss,k,noise",
    [
        (losses.squared, 1, [0.3]),
        (losses.squared, 2, [0.5, 2.0]),
        (losses.softmax_cross_entropy, 4, [1.0]),
        (losses.binary_logistic, 1, [1.0]),
    ],
)
def test_unlabeled_sld_is_mc_mean_of_labeled_sld(loss, k, noise):
    rng = np.random.default_rng(0)
    prob, params, tangent = _problem(loss, k, rng)
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    noise = jnp.asarray(noise, jnp.float32)
    expected = np.asarray(scorers.sld(prob, params, tangent, noise)(x))
    m = 40000
    out = prob.model.apply(params, prob.stats, x)
    xs = jnp.repeat(x, m, axis=0)
    ys = loss.sample(jax.random.PRNGKey(1), jnp.repeat(out, m, axis=0), noise)
    lab = np.asarray(scorers.labeled_sld(prob, params, tangent)(xs, ys)).reshape(6, m)
    mc = lab.mean(1)
    se = lab.std(1) / np.sqrt(m)
    assert np.all(np.abs(mc - expected) < 5 * se + 1e-7), (mc, expected, se)
    assert np.all(expected > 0)


def test_softmax_sld_is_a_variance_without_cancellation():
    """u large and nearly equal across classes: E[u²] - mean² loses everything in float32; Σ p (u -
    mean)² does not."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4))
    u = 1e4 + 1e-1 * rng.normal(size=(500, 4))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.sum(p * (u - np.sum(p * u, 1, keepdims=True)) ** 2, 1)  # float64
    got = np.asarray(
        losses.softmax_cross_entropy.expected_sld(
            jnp.asarray(logits, jnp.float32), jnp.asarray(u, jnp.float32), None
        )
    )
    assert np.all(got >= 0)
    np.testing.assert_allclose(got, truth, rtol=0.05, atol=1e-4)


def test_kpp_draws_with_scores_a_hair_below_zero():
    from alloop.core import diversity as batch

    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    scores = np.abs(rng.normal(size=50))
    scores[:10] = -1e-9
    scores[10] = -np.inf
    drawn, probs = batch.kpp_clip(z, scores, z[:0], 8, np.random.default_rng(1))
    assert (
        len(set(drawn.tolist())) == 8
        and np.all(probs > 0)
        and not set(drawn.tolist()) & set(range(11))
    )


def test_sld_is_zero_without_tangent():
    rng = np.random.default_rng(0)
    prob, params, tangent = _problem(losses.squared, 1, rng)
    zero = jax.tree_util.tree_map(jnp.zeros_like, tangent)
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    assert np.all(np.asarray(scorers.sld(prob, params, zero, [1.0])(x)) == 0)


def test_linear_sld_is_squared_tangent_response():
    """For a linear model u(x) = [x, 1]·θ̇, so SLD = 4σ² (x·ẇ + ḃ)² (57–58)."""
    model = models.linear(2, 1)
    params = model.init(None)
    tangent = {"w": jnp.asarray([[1.0], [-2.0]]), "b": jnp.asarray([0.5])}
    prob = objective.Problem(
        model, losses.squared, regularizers.l2_weights(params), models.identity_standardizer(2)
    )
    x = np.array([[1.0, 1.0], [0.0, 3.0]], np.float32)
    got = np.asarray(scorers.sld(prob, params, tangent, [0.25])(jnp.asarray(x)))
    want = 4 * 0.25 * (x @ np.array([1.0, -2.0]) + 0.5) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pad_apply_matches_unbatched():
    fn = jax.jit(lambda x: jnp.sum(x**2, 1))
    x = np.random.default_rng(0).normal(size=(103, 4)).astype(np.float32)
    np.testing.assert_allclose(scorers.pad_apply(fn, x, 32), np.sum(x**2, 1), rtol=1e-6)


def test_random_scores_do_not_depend_on_batching():
    ids = np.arange(1000, dtype=np.int64)
    full = scorers.random_scores(3, ids)
    parts = np.concatenate(
        [scorers.random_scores(3, ids[:400]), scorers.random_scores(3, ids[400:])]
    )
    np.testing.assert_array_equal(full, parts)
    assert 0.45 < full.mean() < 0.55 and full.min() >= 0 and full.max() < 1
    assert not np.array_equal(full, scorers.random_scores(4, ids))
    sid = scorers.random_scores(3, np.array(["a", "b", "a"], dtype=object))
    assert sid[0] == sid[2] != sid[1]


def test_committee_variance():
    model = models.linear(1, 1)
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(model.init(None)),
        models.identity_standardizer(1),
    )
    members = [{"w": jnp.asarray([[a]]), "b": jnp.asarray([0.0])} for a in (1.0, 2.0, 3.0)]
    got = np.asarray(scorers.committee(prob, members)(jnp.asarray([[1.0], [2.0]])))
    np.testing.assert_allclose(got, [np.var([1, 2, 3]), np.var([2, 4, 6])], rtol=1e-6)


def test_min_distance():
    stats = models.identity_standardizer(2)
    fn = scorers.min_distance(stats, np.array([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_allclose(
        np.asarray(fn(jnp.asarray([[0.0, 1.0], [3.0, 5.0], [6.0, 8.0]]))),
        [1.0, 1.0, 5.0],
        rtol=1e-6,
    )
