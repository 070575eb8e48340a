"""Classification: the identities of method.md for the classifier's losses, the class mapping, the
baseline scorers and the metrics, each against an independent computation.

References are float64 Newton minimizations (a few exact steps reach the optimum to round-off, so
finite differences of retrained models can be checked tightly) and hand-computed numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_helpers import cosine, rel_err
from jax.flatten_util import ravel_pytree

from alloop import strategies
from alloop.core import losses, models, objective, regularizers, scorers, sgdf, tangents
from alloop.errors import UserError
from alloop.training import classmap as classes
from alloop.training import fit as fitting

S = 2.0


def _flat(tree) -> np.ndarray:
    """The leaves in float64, concatenated in tree order (dict keys sorted: b before w), without
    jnp's float32."""
    return np.concatenate(
        [np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(tree)]
    )


_NEWTON: dict = {}


def _newton_fns(prob, params):
    """(f, grad, hess, ravel, unravel) of f/n in float64, jitted once per problem (data passed as
    arguments)."""
    key = id(prob)
    if key not in _NEWTON:
        cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        p64 = prob._replace(stats=cast(prob.stats))
        _, unravel = ravel_pytree(cast(params))
        f = lambda v, s, d: objective.full_objective(p64, unravel(v), s, d)  # noqa: E731
        ravel = lambda t: ravel_pytree(cast(t))[0]  # noqa: E731
        _NEWTON[key] = (
            prob,
            jax.jit(f),
            jax.jit(jax.grad(f)),
            jax.jit(jax.hessian(f)),
            ravel,
            unravel,
        )
    return _NEWTON[key][1:]


def newton64(prob, data, s, params0, iters=50):
    """Damped Newton on f/n in float64 (minimum-norm steps where H is singular); returns params and
    ||∇||."""
    with jax.enable_x64(True):
        f, grad, hess, ravel, unravel = _newton_fns(prob, params0)
        d = objective.Data(
            jnp.asarray(data.x, jnp.float64), jnp.asarray(data.y), jnp.asarray(data.w, jnp.float64)
        )
        v, s = ravel(params0), jnp.float64(s)
        for _ in range(iters):
            g = grad(v, s, d)
            if float(jnp.linalg.norm(g)) < 1e-15:
                break
            step, t, f0 = jnp.linalg.lstsq(hess(v, s, d), g)[0], 1.0, float(f(v, s, d))
            while (
                float(f(v - t * step, s, d)) > f0 + 1e-13 * abs(f0) and t > 1e-8
            ):  # past round-off: full steps
                t /= 2
            v = v - t * step
        return jax.tree_util.tree_map(np.asarray, unravel(v)), float(jnp.linalg.norm(grad(v, s, d)))


def _linear_problem(loss, k, n=80, d=3, seed=0):
    """Linear model, L2 on the weights, labels drawn from a logistic/softmax model of the inputs."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * [1.0, 2.0, 0.5][:d] + 1.0).astype(np.float32)
    logits = x @ rng.normal(size=(d, max(k, 2))) + rng.normal(size=max(k, 2))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(p.shape[1], p=row) for row in p], np.int32)
    model = models.linear(d, k)
    p0 = model.init(None)
    prob = objective.Problem(
        model, loss, regularizers.l2_weights(p0), models.fit_standardizer(x.mean(0), x.std(0))
    )
    return prob, objective.make_data(x, y), p0


def _fd_tangent(prob, data, s, theta, delta):
    hi, g1 = newton64(prob, data, s + delta, theta)
    lo, g2 = newton64(prob, data, s - delta, theta)
    assert max(g1, g2) < 1e-13
    return (_flat(hi) - _flat(lo)) / (2 * delta)


@pytest.fixture(scope="module")
def logistic_case():
    """Binary logistic regression with L2: strictly convex, so θ*(s) and θ̇ are unique."""
    prob, data, p0 = _linear_problem(losses.binary_logistic, 1)
    theta, g = newton64(prob, data, S, p0)
    assert g < 1e-13
    return prob, data, theta, _fd_tangent(prob, data, S, theta, 1e-4)


def test_exact_tangent_of_logistic_regression_matches_finite_differences(logistic_case):
    prob, data, theta, fd = logistic_case
    res = tangents.exact(prob, theta, S, data)
    assert res.residual < 1e-10
    assert rel_err(_flat(res.tangent), fd) < 1e-6  # float32 storage of the result is the limit


def test_sgdf_tangent_of_logistic_regression_matches_finite_differences(logistic_case):
    """SGDF (full-batch SGD started at θ*): the tangent iteration converges to the retrained
    derivative."""
    prob, data, theta, fd = logistic_case
    cfg = sgdf.TrainConfig(optimizer="sgd", lr=0.5, epochs=300, batch_size=80, schedule="constant")
    state, _ = sgdf.fit(
        prob,
        data,
        S,
        cfg,
        params=jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), theta),
    )
    assert rel_err(_flat(state.tangent), fd) < 1e-4
    assert cosine(-_flat(state.tangent), fd) < 0  # a flipped tangent fails


def _centered(tree) -> np.ndarray:
    """A linear softmax tangent without its null direction (the same shift of every class's
    bias)."""
    b = np.asarray(tree["b"], np.float64)
    return np.r_[np.asarray(tree["w"], np.float64).ravel(), b - b.mean()]


@pytest.fixture(scope="module")
def softmax_case():
    """Three-class multinomial logistic regression: the app's loss, with its bias shift left
    free."""
    prob, data, p0 = _linear_problem(losses.softmax_cross_entropy, 3, seed=1)
    theta, g = newton64(prob, data, S, p0)
    assert g < 1e-13
    return prob, data, theta, _fd_tangent(prob, data, S, theta, 1e-4)


def test_softmax_tangents_match_finite_differences(softmax_case):
    """exact and cg agree with retraining, including the free bias shift: H is singular along it,
    and all three leave it at zero (minimum-norm solve; CG and Newton's minimum-norm steps from zero
    stay off it)."""
    prob, data, theta, fd = softmax_case
    assert abs(fd[:3].sum()) < 1e-9  # _flat orders dict keys: b, then w
    for res in (tangents.exact(prob, theta, S, data), tangents.cg(prob, theta, S, data)):
        assert np.all(np.isfinite(_flat(res.tangent))) and res.residual < 1e-10
        assert rel_err(_flat(res.tangent), fd) < 1e-6


def test_app_training_of_a_classifier_carries_the_tangent(softmax_case):
    """What `alloop train` runs (fitting.fit: Adam, cosine decay, SGDF) gives the retrained
    tangent."""
    prob, data, theta, fd = softmax_case
    x = np.asarray(data.x)
    config = {
        "task": "classification",
        "classes": ["a", "b", "c"],
        "targets": ["label"],
        "pool": {"features": ["x0", "x1", "x2"]},
        "standardizer": {"mean": x.mean(0).tolist(), "std": x.std(0).tolist()},
        "model": {"kind": "linear"},
        "s": S,
        "train": {**sgdf.TrainConfig(batch_size=16).to_dict(), "min_steps": 3000},
        "tangent": "sgdf",
    }
    labels = np.array(["a", "b", "c"], object)[np.asarray(data.y)]
    res = fitting.fit(config, x, labels)
    assert res.target is None  # class labels are never standardized
    assert rel_err(_centered(res.params), _centered(theta)) < 1e-3
    fd_tree = {"b": fd[:3], "w": fd[3:].reshape(3, 3)}
    assert rel_err(_centered(res.tangent), _centered(fd_tree)) < 5e-3
    assert res.residual < 1e-2


def test_duality_for_softmax_by_reweighted_retraining(softmax_case):
    """∇L(z)·θ̇ = dR(θ*)/dε when the labeled point z's weight is raised by ε (eq. 70)."""
    prob, data, theta, _ = softmax_case
    tdot = tangents.exact(prob, theta, S, data).tangent
    xz = np.array([[2.5, -1.0, 1.5]], np.float32)
    for yz in (0, 2):
        predicted = float(
            scorers.loss_derivative(prob, theta, tdot, jnp.asarray(xz), jnp.asarray([yz]))[0]
        )
        x = np.r_[np.asarray(data.x), xz]
        y = np.r_[np.asarray(data.y), yz].astype(np.int32)
        r = []
        for eps in (1e-4, -1e-4):
            w = np.r_[np.ones(len(data.x)), eps]
            th, g = newton64(prob, objective.make_data(x, y, w), S, theta)
            assert g < 1e-13
            with jax.enable_x64(True):
                r.append(float(prob.reg.value(jax.tree_util.tree_map(jnp.asarray, th))))
        observed = (r[0] - r[1]) / 2e-4
        assert abs(observed) > 1e-2
        assert observed == pytest.approx(predicted, rel=1e-4)


# --- SLD for classifiers -----------------------------------------------------------------------


def test_softmax_sld_is_the_variance_of_u_under_p():
    """Q = Σ p u² − (Σ p u)², by hand, and unchanged by a common shift of u (the bias null
    direction)."""
    logits = jnp.asarray([[0.0, 1.0, -1.0], [2.0, 2.0, 2.0]])
    u = jnp.asarray([[1.0, -2.0, 0.5], [3.0, 0.0, 0.0]])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True)
    want = [sum(p[i] * np.asarray(u[i]) ** 2) - sum(p[i] * np.asarray(u[i])) ** 2 for i in range(2)]
    got = losses.softmax_cross_entropy.expected_sld(logits, u, None)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy.expected_sld(logits, u + 7.0, None), want, rtol=1e-5
    )
    np.testing.assert_allclose(
        got[1], 2.0, rtol=1e-6
    )  # uniform p over (3, 0, 0): mean 1, mean square 3


def test_two_class_softmax_sld_equals_logistic_sld():
    """Binary softmax with logits (z0, z1) is logistic regression on z1 − z0: same SLD, p(1 − p)(u1
    − u0)²."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(7, 2)), jnp.float32)
    u = jnp.asarray(rng.normal(size=(7, 2)), jnp.float32)
    soft = losses.softmax_cross_entropy.expected_sld(logits, u, None)
    logi = losses.binary_logistic.expected_sld(
        logits[:, 1:] - logits[:, :1], u[:, 1:] - u[:, :1], None
    )
    np.testing.assert_allclose(soft, logi, rtol=1e-5, atol=1e-7)


def test_unlabeled_sld_is_mc_mean_of_labeled_sld_for_a_trained_classifier(softmax_case):
    """Identity 5 at a trained multinomial model with its exact tangent (test_scorers checks random
    ones)."""
    prob, data, theta, _ = softmax_case
    theta = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), theta)
    tdot = tangents.exact(prob, theta, S, data).tangent
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)) * 2 + 1, jnp.float32)
    expected = np.asarray(scorers.sld(prob, theta, tdot, [1.0])(x))
    m = 40000
    logits = prob.model.apply(theta, prob.stats, x)
    ys = losses.softmax_cross_entropy.sample(
        jax.random.PRNGKey(3), jnp.repeat(logits, m, axis=0), None
    )
    lab = np.asarray(scorers.labeled_sld(prob, theta, tdot)(jnp.repeat(x, m, axis=0), ys)).reshape(
        4, m
    )
    se = lab.std(1) / math.sqrt(m)
    assert np.all(np.abs(lab.mean(1) - expected) < 5 * se + 1e-9), (lab.mean(1), expected)


# --- baselines ---------------------------------------------------------------------------------


def _fixed_logits_problem(logits):
    """A linear model whose output on the identity rows is ``logits`` (x = e_i, W = logits, b =
    0)."""
    logits = np.asarray(logits, np.float32)
    n, k = logits.shape
    model = models.linear(n, k)
    params = {"w": jnp.asarray(logits), "b": jnp.zeros((k,), jnp.float32)}
    prob = objective.Problem(
        model,
        losses.softmax_cross_entropy,
        regularizers.l2_weights(params),
        models.identity_standardizer(n),
    )
    return prob, params, jnp.eye(n, dtype=jnp.float32)


def test_uncertainty_scores_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]])
    prob, params, x = _fixed_logits_problem(np.log(probs))
    np.testing.assert_allclose(
        scorers.entropy(prob, params)(x), -(probs * np.log(probs)).sum(1), rtol=1e-5
    )
    np.testing.assert_allclose(scorers.margin(prob, params)(x), [-0.5, 0.0, 0.0, -0.97], atol=1e-6)
    np.testing.assert_allclose(
        scorers.least_confident(prob, params)(x), [0.3, 0.6, 2 / 3, 0.02], atol=1e-6
    )
    assert np.argmax(np.asarray(scorers.entropy(prob, params)(x))) == 2


def test_committee_scores_by_hand():
    """Mean KL of the members to their consensus, and the entropy of their hard votes."""
    a = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    b = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    c = np.array([[0.6, 0.3, 0.1], [0.5, 0.25, 0.25]])
    members, x = [], None
    for p in (a, b, c):
        prob, params, x = _fixed_logits_problem(np.log(p))
        members.append(params)
    mean = (a + b + c) / 3
    kl = np.mean([np.sum(p * np.log(p / mean), axis=1) for p in (a, b, c)], axis=0)
    np.testing.assert_allclose(scorers.committee_kl(prob, members)(x), kl, rtol=1e-4, atol=1e-7)
    assert kl[0] > 0.1 and abs(kl[1]) < 1e-12  # members that agree score zero
    votes = np.array([2 / 3, 0, 1 / 3])  # row 0: classes 0, 2, 0
    np.testing.assert_allclose(
        scorers.vote_entropy(prob, members)(x)[0],
        -(votes[votes > 0] * np.log(votes[votes > 0])).sum(),
        rtol=1e-5,
    )
    assert float(scorers.vote_entropy(prob, members)(x)[1]) == 0.0


def test_strategies_refuse_the_other_task(monkeypatch):
    for s in ("entropy", "margin", "least-confident"):
        strategies.for_query(s, "classification")
        with pytest.raises(UserError, match=f"--strategy {s} is for classification runs"):
            strategies.for_query(s, "regression")
    for s in ("sld", "random", "committee", "greedy"):
        strategies.for_query(s, "classification")
        strategies.for_query(s, "regression")
    # a strategy declared for regression only is refused on a classification run without further
    # code
    for s in ("emcm", "sld-seq"):
        strategies.for_query(s, "regression")
        with pytest.raises(UserError, match="is for regression runs"):
            strategies.for_query(s, "classification")
    monkeypatch.setitem(
        strategies.REGISTRY,
        "new",
        strategies.Strategy("new", "a test", keep=lambda r, k: (None, k), tasks=("regression",)),
    )
    with pytest.raises(UserError, match="--strategy new is for regression runs"):
        strategies.for_query("new", "classification")


# --- metrics -----------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    """Four rows, three classes (class 2 never occurs nor is predicted: macro-F1 averages classes 0
    and 1)."""
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.25, 0.7, 0.05]])
    y = np.array([0, 1, 1, 1])
    m = fitting.classification_metrics(np.log(p), y, 3)
    # predictions 0, 1, 0, 1: right on rows 0, 1, 3
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["log_loss"] == pytest.approx(
        -(math.log(0.5) + math.log(0.7) + math.log(0.3) + math.log(0.7)) / 4, rel=1e-6
    )
    # class 0: tp 1, fp 1, fn 0 -> F1 2/3; class 1: tp 2, fp 0, fn 1 -> F1 4/5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2, rel=1e-9)


def test_metrics_read_user_labels_of_any_type():
    """The test set's labels may be ints, floats or strings: they mean the same classes."""
    config = {
        "task": "classification",
        "classes": ["1", "2", "10"],
        "model": {"kind": "linear"},
        "pool": {"features": ["x"]},
        "standardizer": {"mean": [0.0], "std": [1.0]},
        "targets": ["y"],
    }
    params = {"w": np.array([[0.0, 1.0, -1.0]], np.float32), "b": np.zeros(3, np.float32)}
    x = np.array([[3.0], [-3.0]], np.float32)  # predicts class index 1 ("2"), then 2 ("10")
    for y in ([2, 10], [2.0, 10.0], ["2", "10"], ["2.0", "10"]):
        m = fitting.metrics(config, params, x, np.array(y, dtype=object))
        assert m["test_accuracy"] == 1.0, y
    assert fitting.metrics(config, params, x, np.array(["10", "2"], object))["test_accuracy"] == 0.0


# --- the class mapping -------------------------------------------------------------------------


def test_initial_classes():
    assert classes.initial_classes(["y"], ["b", "a"], ["c"]) == ["a", "b", "c"]
    assert classes.initial_classes(["y"], [10, 2, 1.0], ()) == ["1", "2", "10"]  # numbers by value
    assert classes.initial_classes(["y"], ["neg"], (), explicit=["pos", "neg"]) == [
        "pos",
        "neg",
    ]  # order as given
    with pytest.raises(UserError, match="'maybe', which --classes does not list"):
        classes.initial_classes(["y"], ["neg", "maybe"], (), explicit=["pos", "neg"])
    with pytest.raises(UserError, match="names class '1' twice"):
        classes.initial_classes(["y"], (), (), explicit=["1", "1.0"])
    with pytest.raises(UserError, match="at least two classes.*only 'a'"):
        classes.initial_classes(["y"], ["a", "a"], ())
    with pytest.raises(UserError, match="exactly one target column"):
        classes.initial_classes(["y", "z"], ["a", "b"], ())


def test_extending_the_mapping_keeps_every_index():
    old = ["b", "d"]
    new = classes.extend(old, ["d", "a", "c", "a"])
    assert new == ["b", "d", "a", "c"]
    np.testing.assert_array_equal(
        classes.to_indices(new, ["b", "d"]), classes.to_indices(old, ["b", "d"])
    )
    assert list(classes.to_labels(new, [2, 0])) == ["a", "b"]
    with pytest.raises(ValueError, match="'e' is not one of"):
        classes.to_indices(new, ["e"])


@pytest.mark.parametrize("spec", [{"kind": "linear"}, {"kind": "mlp", "hidden": [4]}])
def test_growing_the_output_layer_keeps_the_trained_classes(spec):
    """A checkpoint for 2 classes padded to 3: old logits unchanged, the new class's logit starts at
    0 (linear) / its bias."""
    config = {
        "task": "classification",
        "classes": ["a", "b"],
        "model": spec,
        "pool": {"features": ["x0", "x1"]},
        "standardizer": {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
        "train": sgdf.TrainConfig().to_dict(),
        "targets": ["y"],
    }
    grown_config = {**config, "classes": ["a", "b", "c"]}
    rng = np.random.default_rng(0)
    old = jax.tree_util.tree_map(
        lambda a: rng.normal(size=np.shape(a)).astype(np.asarray(a).dtype),
        fitting.checkpoint_like(config),
    )
    grown = classes.grow_tree(old, fitting.checkpoint_like(grown_config))
    assert jax.tree_util.tree_structure(grown) == jax.tree_util.tree_structure(
        fitting.checkpoint_like(grown_config)
    )
    x = rng.normal(size=(5, 2)).astype(np.float32)
    before = fitting.predict(config, old["params"], x)
    after = fitting.predict(grown_config, grown["params"], x)
    np.testing.assert_allclose(after[:, :2], before, rtol=1e-6)
    np.testing.assert_allclose(after[:, 2], 0.0)
    t_before = fitting.predict(config, old["tangent"], x)  # the tangent tree is params-shaped too
    np.testing.assert_allclose(
        fitting.predict(grown_config, grown["tangent"], x)[:, :2], t_before, rtol=1e-6
    )
    with pytest.raises(ValueError, match="cannot grow"):
        classes.grow_tree(grown, fitting.checkpoint_like(config))
