"""Exact ridge for simulations: θ*, the regularity tangent θ̇ and LOOCV in closed form (numpy,
float64).

The core's ``linear`` and ``poly`` models are linear in their parameters: F(x) = a(x)ᵀθ with
a(x) = [φ(z), 1], z the standardized input, φ the model's features (z, or z, z², …, z^degree) and a
bias that the l2 regularizer leaves free (D = diag(1, …, 1, 0)). With f = Σ w_i (a_iᵀθ − y_i)² + s
θᵀDθ,

    θ* = (AᵀWA + sD)⁻¹ AᵀWy,        θ̇ = −(AᵀWA + sD)⁻¹ D θ*          (method.md, 87–93)

which is what every tangent method of the core converges to (method.md, identity 1), at the cost of
one p×p inverse instead of thousands of SGDF steps. The simulation retrains hundreds of times per
curve, so it uses this form; tests check it against ``core.tangents.exact`` and
``core.scorers.sld``.

LOOCV has a closed form for such linear smoothers: the leave-one-out residual of row i is
e_i / (1 − h_ii), with h the diagonal of the hat matrix A(AᵀA + sD)⁻¹Aᵀ.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from alloop.core import models
from alloop.strategies import TrainedModel
from alloop.strategies.builtin import COMMITTEE_SIZE
from alloop.training import choose_s as choose_s_mod
from alloop.training import fit as fitting

S_GRID = np.logspace(-3, 4, 29)  # candidate regularities for s = "loocv"


class Features(NamedTuple):
    """The feature map a(x) of a linear-in-parameters model, with the pool's standardization."""

    kind: str  # "linear" | "poly"
    degree: int
    mean: np.ndarray
    scale: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        phi = (
            z if self.kind == "linear" else models.poly_features(z, self.degree, np)
        )  # the run's poly model, in float64
        return np.concatenate([phi, np.ones((len(z), 1))], axis=1)


class Ridge(NamedTuple):
    """A fitted ridge model: θ*, θ̇, (AᵀWA + sD)⁻¹ and the residual variance σ²."""

    theta: np.ndarray
    tangent: np.ndarray
    hinv: np.ndarray
    noise: float


def make_features(model: dict, mean, std) -> Features:
    """Features for a model spec such as ``{"kind": "poly", "degree": 2}`` (constant columns get
    scale 1)."""
    kind = model.get("kind", "linear")
    if kind not in ("linear", "poly"):
        raise ValueError(f"closed-form ridge needs a linear or poly model, not {kind!r}")
    std = np.asarray(std, np.float64)
    scale = np.where(std > 1e-12, std, 1.0)
    return Features(
        kind,
        int(model.get("degree", 3)) if kind == "poly" else 1,
        np.asarray(mean, np.float64),
        scale,
    )


def penalty(p: int) -> np.ndarray:
    """The diagonal of D: every weight regularized, the last coordinate (the bias) free."""
    d = np.ones(p)
    d[-1] = 0.0
    return d


def fit_ridge(
    a: np.ndarray, y: np.ndarray, s: float, d: np.ndarray, w: np.ndarray | None = None
) -> Ridge:
    """Weighted ridge in closed form, with its regularity tangent."""
    w = np.ones(len(a)) if w is None else np.asarray(w, np.float64)
    m = (a * w[:, None]).T @ a + s * np.diag(d)
    hinv = np.linalg.inv(m)
    hinv = 0.5 * (hinv + hinv.T)
    theta = hinv @ (a.T @ (w * y))
    tangent = -hinv @ (d * theta)
    resid = a @ theta - y
    noise = float(max(np.mean(resid**2), 1e-12))
    return Ridge(theta, tangent, hinv, noise)


def hat_diagonal(a: np.ndarray, s: float, d: np.ndarray) -> np.ndarray:
    """h_ii of the hat matrix A(AᵀA + sD)⁻¹Aᵀ."""
    hinv = np.linalg.inv(a.T @ a + s * np.diag(d))
    return np.einsum("ij,jk,ik->i", a, hinv, a)


def loocv_residuals(a: np.ndarray, y: np.ndarray, s: float, d: np.ndarray) -> np.ndarray:
    """Leave-one-out residuals e_i / (1 − h_ii), without refitting."""
    fit = fit_ridge(a, y, s, d)
    return (a @ fit.theta - y) / (1.0 - hat_diagonal(a, s, d))


def loocv_mse(a: np.ndarray, y: np.ndarray, s: float, d: np.ndarray) -> float:
    return float(np.mean(loocv_residuals(a, y, s, d) ** 2))


def choose_s(a: np.ndarray, y: np.ndarray, d: np.ndarray, grid=S_GRID) -> float:
    """The grid value of s with the smallest LOOCV error (the first, if several tie)."""
    errors = [loocv_mse(a, y, float(s), d) for s in grid]
    return float(grid[int(np.nanargmin(errors))])


def bootstrap_thetas(
    a: np.ndarray, y: np.ndarray, s: float, d: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """(k, p) parameters of ridge fits on k bootstrap resamples of the rows (query by committee)."""
    n = len(a)
    return np.stack(
        [fit_ridge(a[idx], y[idx], s, d).theta for idx in (rng.integers(0, n, n) for _ in range(k))]
    )


def core_params(theta: np.ndarray) -> dict:
    """θ laid out as the core models' parameter tree ({"w": (p−1, 1), "b": (1,)}), float32."""
    theta = np.asarray(theta, np.float32)
    return {"w": theta[:-1, None], "b": theta[-1:]}


class RidgeFit(NamedTuple):
    """A round's fit: the ridge solution, the s it was fitted at, and the labeled pool rows."""

    ridge: Ridge
    s: float
    labeled: np.ndarray


class RidgeLearner:
    """The simulation's learner for linear/poly regression: ridge in closed form on the pool's
    features.

    ``data``/``settings``: ``simulate.SimData``/``SimSettings``; ``config``: the RunConfig ``alloop
    init`` would write. Its s is chosen every round as ``alloop train`` chooses it
    (``choose_s.resolve_s``, warm-started from the last round's s) when it is ``auto`` or ``loocv``.
    ``model(state)`` hands the fit to the strategies as the core's model with θ* and θ̇, what a
    run's checkpoint gives them; SGDF converges to the same θ* and θ̇ (tests/test_simulate.py checks
    it against ``fit.fit``).
    """

    def __init__(self, data, settings, config):
        self.data, self.settings, self.config = data, settings, config
        mean, std = (
            config.standardizer["mean"],
            config.standardizer["std"],
        )  # the run's standardizer: θ maps onto the core's model
        self.features = make_features(settings.model, mean, std)
        self.a_pool = self.features(data.x_pool)
        self.a_test = self.features(data.x_test)
        self.d = penalty(self.a_pool.shape[1])
        init = fitting.build_model(config).init(jax.random.PRNGKey(0))
        self.problem = fitting.build_problem(config, init)
        self._s = None  # the last round's s: the next search starts there
        self.cv_loss = (
            None  # the CV loss of the last round's s search (a stopping signal), None for a fixed s
        )

    def fit(self, labeled: np.ndarray, w: np.ndarray | None):
        a, y = self.a_pool[labeled], self.data.y_pool[labeled]
        if choose_s_mod.is_mode(self.config.s):
            prev = self._s if len(labeled) > self.settings.initial else None
            s, choice = choose_s_mod.resolve_s(
                self.config, self.data.x_pool[labeled].astype(np.float32), y[:, None], s_prev=prev
            )
            self.cv_loss = None if choice is None else choice.cv_loss
        else:
            s = float(self.config.s)
        self._s = s
        return RidgeFit(fit_ridge(a, y, s, self.d, w), s, labeled)

    def test_metric(self, state) -> float:
        """Test RMSE."""
        return float(np.sqrt(np.mean((self.a_test @ state.ridge.theta - self.data.y_test) ** 2)))

    def model(self, state, seed: int) -> TrainedModel:
        fit, s, labeled = state.ridge, state.s, state.labeled
        a_l, y_l = self.a_pool[labeled], self.data.y_pool[labeled]

        def members() -> list:
            rng = np.random.default_rng(seed)
            return [
                core_params(t) for t in bootstrap_thetas(a_l, y_l, s, self.d, COMMITTEE_SIZE, rng)
            ]

        return TrainedModel(
            problem=self.problem,
            params=core_params(fit.theta),
            tangent=core_params(fit.tangent),
            noise=np.array([fit.noise], np.float32),
            s=s,
            members=members,
        )
