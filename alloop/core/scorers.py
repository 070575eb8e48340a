"""Query scorers: a batch of pool rows in, one score per row out (higher = more worth labeling).

Every scorer is built once from the trained state and then applied to fixed-shape batches
(``pad_apply`` pads the last, short batch) so XLA compiles it once per query.

- ``sld``: unlabeled squared loss derivative, E_y[(dL(z, θ*)/ds)²] (method.md eq. 67): one
  forward-mode pass along θ̇ per batch, u = J_F θ̇, then the loss's closed form.
- ``labeled_sld``: (∇θ L(z) · θ̇)² for rows whose label is known.
- ``committee``: predictive variance across models fitted on bootstrap resamples (query by
  committee); for classifiers ``committee_kl`` (mean KL of each member to the consensus) or
  ``vote_entropy``.
- ``entropy``, ``margin``, ``least_confident``: uncertainty of a classifier's predictive
  distribution.
- ``random``: a hash of (seed, id), so a row's score does not depend on how the pool is batched.
- ``min_distance``: distance from a row to the nearest labeled row in standardized features (greedy
  sampling, GSx), the cold-start fallback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alloop.core.models import standardize
from alloop.core.objective import Problem

_COMPILED: dict[
    int, tuple
] = {}  # id(problem) -> (problem, {name: jitted function}), for the last few problems


def jit_for(problem: Problem, name: str, make: Callable) -> Callable:
    """``jax.jit(make())``, built once per problem and name: a scorer rebuilt every round around new
    θ (a simulation, a long-lived process) reuses the compiled function for the same shapes."""
    entry = _COMPILED.get(id(problem))
    if entry is None or entry[0] is not problem:
        if len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        entry = _COMPILED[id(problem)] = (problem, {})
    if name not in entry[1]:
        entry[1][name] = jax.jit(make())
    return entry[1][name]


def tangent_outputs(problem: Problem, params, tangent, x):
    """(F(x), u(x) = J_F(x) θ̇): the model output and its derivative along the tangent."""
    return jax.jvp(lambda p: problem.model.apply(p, problem.stats, x), (params,), (tangent,))


def sld(problem: Problem, params, tangent, noise) -> Callable:
    """Jitted x -> unlabeled SLD per row. ``noise`` is σ² per output (squared loss); ignored
    otherwise."""
    noise = jnp.asarray(noise, jnp.float32)

    def make():
        def score(params, tangent, noise, x):
            out, u = tangent_outputs(problem, params, tangent, x)
            return problem.loss.expected_sld(out, u, noise)

        return score

    score = jit_for(problem, "sld", make)
    return lambda x: score(params, tangent, noise, x)


def loss_derivative(problem: Problem, params, tangent, x, y):
    """dL(z_i, θ*)/ds = ∇θ L(z_i) · θ̇ for each labeled row (method.md eq. 65)."""
    per_row = lambda p: problem.loss.per_example(problem.model.apply(p, problem.stats, x), y)  # noqa: E731
    return jax.jvp(per_row, (params,), (tangent,))[1]


def labeled_sld(problem: Problem, params, tangent) -> Callable:
    """Jitted (x, y) -> (dL/ds)² per row."""
    score = jax.jit(lambda p, t, x, y: loss_derivative(problem, p, t, x, y) ** 2)
    return lambda x, y: score(params, tangent, x, y)


def committee(problem: Problem, members: Sequence) -> Callable:
    """Jitted x -> variance of the members' outputs, summed over outputs."""
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)

    def make():
        def score(stacked, x):
            outs = jax.vmap(lambda p: problem.model.apply(p, problem.stats, x))(stacked)
            return jnp.sum(jnp.var(outs, axis=0), axis=-1)

        return score

    score = jit_for(problem, "committee", make)
    return lambda x: score(stacked, x)


def _probs(problem: Problem, params, x) -> jax.Array:
    return jax.nn.softmax(problem.model.apply(params, problem.stats, x), axis=-1)


def _uncertainty(problem: Problem, params, measure: Callable, name: str) -> Callable:
    score = jit_for(problem, name, lambda: lambda p, x: measure(_probs(problem, p, x)))
    return lambda x: score(params, x)


def _entropy(p):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def entropy(problem: Problem, params) -> Callable:
    """Jitted x -> entropy of the predicted class distribution, −Σ_k p_k log p_k."""
    return _uncertainty(problem, params, _entropy, "entropy")


def margin(problem: Problem, params) -> Callable:
    """Jitted x -> −(p_(1) − p_(2)): minus the gap between the two most probable classes (small
    gap = high score)."""

    def neg_gap(p):
        top = jax.lax.top_k(p, 2)[0]
        return top[:, 1] - top[:, 0]

    return _uncertainty(problem, params, neg_gap, "margin")


def least_confident(problem: Problem, params) -> Callable:
    """Jitted x -> 1 − max_k p_k."""
    return _uncertainty(problem, params, lambda p: 1.0 - jnp.max(p, axis=-1), "least-confident")


def _stack(members: Sequence):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)


def committee_kl(problem: Problem, members: Sequence) -> Callable:
    """Jitted x -> mean over members of KL(p_m || p̄), p̄ the members' mean distribution (McCallum &
    Nigam 1998).

    Equals the entropy of p̄ minus the mean entropy of the members: disagreement, not shared doubt.
    """
    stacked = _stack(members)

    def make():
        def score(stacked, x):
            probs = jax.vmap(lambda p: _probs(problem, p, x))(stacked)
            return _entropy(jnp.mean(probs, axis=0)) - jnp.mean(jax.vmap(_entropy)(probs), axis=0)

        return score

    score = jit_for(problem, "committee-kl", make)
    return lambda x: score(stacked, x)


def vote_entropy(problem: Problem, members: Sequence) -> Callable:
    """Jitted x -> entropy of the members' hard votes (fraction of members predicting each
    class)."""
    stacked = _stack(members)

    @jax.jit
    def score(stacked, x):
        logits = jax.vmap(lambda p: problem.model.apply(p, problem.stats, x))(stacked)
        votes = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1])
        return _entropy(jnp.mean(votes, axis=0))

    return lambda x: score(stacked, x)


def min_distance(stats, labeled_x) -> Callable:
    """Jitted x -> Euclidean distance (standardized features) to the nearest labeled row; +inf if
    none."""
    lz = standardize(stats, jnp.asarray(labeled_x, jnp.float32))
    if lz.shape[0] == 0:
        return lambda x: jnp.full((x.shape[0],), jnp.inf, jnp.float32)
    return lambda x: _min_distance(stats, lz, x)


@jax.jit
def _min_distance(stats, lz, x):
    """One compiled function for every round (the statistics and labeled rows are arguments, not
    constants)."""
    z = standardize(stats, x)
    d2 = jnp.sum(z**2, 1)[:, None] - 2 * z @ lz.T + jnp.sum(lz**2, 1)[None, :]
    return jnp.sqrt(jnp.maximum(jnp.min(d2, axis=1), 0.0))


def random_scores(seed: int, ids: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) scores from a hash of (seed, id): deterministic and independent of
    batching."""
    if ids.dtype.kind in "iu":
        z = ids.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        with np.errstate(over="ignore"):  # splitmix64 finalizer
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        return (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    out = np.empty(len(ids), np.float64)
    for i, v in enumerate(ids):
        h = hashlib.blake2b(f"{seed}:{v}".encode(), digest_size=8).digest()
        out[i] = (int.from_bytes(h, "little") >> 11) / float(2**53)
    return out


def pad_apply(fn: Callable, x: np.ndarray, batch_rows: int) -> np.ndarray:
    """Apply ``fn`` in fixed-shape chunks of ``batch_rows`` rows (the last one padded), return
    numpy."""
    n = x.shape[0]
    out = []
    for i in range(0, n, batch_rows):
        chunk = x[i : i + batch_rows]
        m = chunk.shape[0]
        if m < batch_rows:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_rows - m, axis=0)])
        out.append(np.asarray(fn(chunk))[:m])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def residual_noise(problem: Problem, params, x, y, apply=None) -> np.ndarray:
    """σ² per output estimated from the labeled residuals (squared loss); ones for other losses.
    ``apply``: the model's jitted apply where the caller keeps one (eager ops are slow)."""
    apply = apply or problem.model.apply
    out = np.asarray(apply(params, problem.stats, jnp.asarray(x, jnp.float32)))
    if problem.loss.name != "squared":
        return np.ones((out.shape[-1],), np.float32)
    r2 = np.mean((out - np.asarray(y, np.float32).reshape(out.shape)) ** 2, axis=0)
    return np.maximum(r2, 1e-12).astype(np.float32)
