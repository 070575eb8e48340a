"""The trained model as strategies see it: θ, θ̇ and the objective, with the row scorers built from
them once.

Scorers come from ``core.scorers`` (jitted on first use and cached on this object, so one round
compiles each at most once). Regression outputs are in the units training used (targets standardized
by ``target``); ``predict`` maps them back to the labels' units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from alloop.core import models, parallel, scorers, sgdf
from alloop.core.objective import Problem

SCORE_ROWS = 16384  # rows per call when a whole candidate set is scored (stream.SCORE_ROWS)


@dataclass(eq=False, kw_only=True)
class TrainedModel:
    """A trained model as strategies see it, built by keyword (``TrainedModel(problem=...,
    params=...)``)."""

    problem: Problem
    params: Any
    tangent: Any
    noise: np.ndarray  # σ² per output (squared loss)
    s: float
    target: tuple | None = (
        None  # (mean, scale) of the regression targets as trained, or None (raw units)
    )
    members: Callable[[], list] | None = (
        None  # bootstrap members' parameters (query by committee), built on demand
    )
    _cache: dict = field(default_factory=dict)

    def _cached(self, key: str, build: Callable):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def tangent_health(self) -> str:
        """ "ok", "zero" (cold start: θ = 0 gives θ̇ = 0) or "nonfinite" (training diverged)."""
        norm = sgdf.tree_norm(self.tangent)
        return "ok" if norm > 0 and np.isfinite(norm) else ("zero" if norm == 0 else "nonfinite")

    def sld(self) -> Callable:
        """Jitted x -> unlabeled SLD per row (method.md eq. 67)."""
        return self._cached(
            "sld",
            lambda: scorers.sld(
                self.problem, self.params, self.tangent, np.asarray(self.noise, np.float32)
            ),
        )

    def uncertainty(self, kind: str) -> Callable:
        """Jitted x -> entropy, margin or least-confident score of the predicted class
        distribution."""
        build = {
            "entropy": scorers.entropy,
            "margin": scorers.margin,
            "least-confident": scorers.least_confident,
        }[kind]
        return self._cached(kind, lambda: build(self.problem, self.params))

    def member_params(self) -> list:
        return self._cached("members", self.members)

    def committee(self) -> Callable:
        """Jitted x -> disagreement of the bootstrap members (variance; mean KL for classifiers)."""
        kl = self.problem.loss.name == "softmax"
        return self._cached(
            "committee",
            lambda: (scorers.committee_kl if kl else scorers.committee)(
                self.problem, self.member_params()
            ),
        )

    def on_rows(self, fn: Callable, x: np.ndarray, devices: int = 1) -> np.ndarray:
        """``fn`` over all rows of ``x`` in equal chunks of at most SCORE_ROWS, split over
        ``devices`` (float64)."""
        if len(x) == 0:
            return np.zeros(0)
        rows = parallel.even_chunk(len(x), SCORE_ROWS, devices)
        return parallel.score_rows(fn, np.asarray(x, np.float32), rows, devices).astype(np.float64)

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F(x), u(x) = J_F(x)θ̇) of the first output, in training units, float64."""
        fn = scorers.jit_for(
            self.problem,
            "outputs",
            lambda: (
                lambda p, t, x: jnp.stack(
                    [o[:, 0] for o in scorers.tangent_outputs(self.problem, p, t, x)], 1
                )
            ),
        )
        both = _chunked(lambda c: fn(self.params, self.tangent, c), x, 2)
        return both[:, 0], both[:, 1]

    def predict(self, x: np.ndarray, params=None) -> np.ndarray:
        """The first output in the labels' units (regression)."""
        fn = scorers.jit_for(
            self.problem,
            "apply",
            lambda: lambda p, x: self.problem.model.apply(p, self.problem.stats, x)[:, 0],
        )
        out = _chunked(lambda c: fn(self.params if params is None else params, c), x, 0)
        return (
            out
            if self.target is None
            else out * float(self.target[1][0]) + float(self.target[0][0])
        )

    def gradient_features(self, x: np.ndarray) -> np.ndarray:
        """(n, p) a(x) = ∂F(x)/∂θ of the first output, θ flattened (for a linear model: [z, 1])."""

        def row(p, xi):
            return ravel_pytree(
                jax.grad(lambda q: self.problem.model.apply(q, self.problem.stats, xi[None])[0, 0])(
                    p
                )
            )[0]

        fn = scorers.jit_for(self.problem, "jacobian", lambda: jax.vmap(row, (None, 0)))
        return _chunked(lambda c: fn(self.params, c), x, self.n_params)

    @property
    def n_params(self) -> int:
        return int(ravel_pytree(self.params)[0].shape[0])

    def curvature_inverse(
        self, labeled_x: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """(AᵀWA + sD)⁻¹ over the labeled rows, D the regularized coordinates: the inverse Hessian
        (halved) of a model linear in θ, its Gauss-Newton form otherwise. Labeling row j adds a_j
        a_jᵀ to it."""
        a = self.gradient_features(labeled_x)
        w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
        mask = np.asarray(ravel_pytree(models.weight_mask(self.params))[0], np.float64)
        m = (a * w[:, None]).T @ a + self.s * np.diag(mask)
        hinv = np.linalg.pinv(m, hermitian=True)
        return 0.5 * (hinv + hinv.T)


def _chunked(fn: Callable, x: np.ndarray, width: int) -> np.ndarray:
    """``fn`` over equal fixed-shape chunks of at most SCORE_ROWS rows, as float64 numpy."""
    if len(x) == 0:
        return np.zeros((0, width) if width else (0,))
    return parallel.score_rows(
        fn, np.asarray(x, np.float32), parallel.even_chunk(len(x), SCORE_ROWS)
    ).astype(np.float64)
