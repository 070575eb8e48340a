"""Cross-validation of models linear in their parameters, in closed form (numpy, float64).

For a model F_i(θ) = J_i θ + F0_i with the squared loss and a quadratic regularizer
R(θ) = θᵀDθ + cᵀθ + R0 (``hyper.linear_form`` writes a run's linear or poly model this way), every
fold's optimum and regularity tangent solve the normal equations (method.md, 87–93):

    M_j(s) = Σ_i m_ji w_i J_iᵀJ_i + sD,   θ_j* = M_j⁻¹ (Σ_i m_ji w_i J_iᵀ r_i − s c/2),
    θ̇_j = −M_j⁻¹ (D θ_j* + c/2),          r_i = y_i − F0_i.

The Gram matrices of the folds do not depend on s, so they are formed once and every s the search
tries costs k small solves. ``hyper.exact_cv`` computes the same quantities in JAX; compiled once
per shape, it paid a compilation for every label count a run or a simulation passes through, which
cost more than everything else a round does (benchmarks/bench_simulate.py). Nothing here compiles.

LOOCV is the closed form of ``hyper.loocv`` with its derivative in s written out: with lev_i =
w_i J_i M⁻¹ J_iᵀ, the leave-one-out residual is (I − lev_i)⁻¹ e_i, and d/ds of M⁻¹ is −M⁻¹DM⁻¹.
"""

from __future__ import annotations

import numpy as np


class LinearCV:
    """CV(s), its hypergradient and the related closed forms of one labeled set and its folds.

    ``jac`` (n, k, p) and ``offset`` (n, k): the model's linear form on the labeled rows; ``y`` (n,
    k) targets; ``w`` (n,) row weights (0: padding, never trained on or validated); ``masks`` (f, n)
    fold training masks (``hyper.fold_masks``); ``dmat`` (p, p) and ``lin`` (p,): the regularizer's
    D and c.
    """

    def __init__(self, jac, offset, y, w, masks, dmat, lin):
        f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
        self.jac, self.w = f64(jac), f64(w)
        n, k, p = self.jac.shape
        self.k = k
        self.y0 = f64(y).reshape(n, k)[:, 0]
        self.r = f64(y).reshape(n, k) - f64(offset).reshape(n, k)
        self.dmat, self.lin = f64(dmat), f64(lin)
        self.masks = f64(masks)
        self.active = self.w > 0
        self.val = (1.0 - self.masks) * self.active[None, :]  # rows each fold is validated on
        rows = self.jac.reshape(n * k, p)
        wr = np.repeat(self.w, k)
        mr = (
            np.repeat(self.masks, k, axis=1) * wr[None, :]
        )  # (f, n·k) training weight of each output row
        self.gram = np.einsum("rp,fr,rq->fpq", rows, mr, rows, optimize=True)
        self.rhs = np.einsum("rp,fr,r->fp", rows, mr, self.r.reshape(n * k), optimize=True)
        self.full_gram = (rows * wr[:, None]).T @ rows
        self.full_rhs = rows.T @ (wr * self.r.reshape(n * k))

    # --- solutions -------------------------------------------------------------------------------

    def _solve(self, gram, rhs, s):
        m = gram + s * self.dmat
        theta = np.linalg.solve(m, (rhs - 0.5 * s * self.lin)[..., None])[..., 0]
        tdot = -np.linalg.solve(m, (theta @ self.dmat.T + 0.5 * self.lin)[..., None])[..., 0]
        return theta, tdot

    def fold_solutions(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """(θ_j*, θ̇_j) of every fold, shapes (f, p)."""
        return self._solve(self.gram, self.rhs, s)

    def full_solution(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """(θ*, θ̇) on every labeled row, shapes (p,)."""
        return self._solve(self.full_gram, self.full_rhs, s)

    # --- k-fold CV --------------------------------------------------------------------------------

    def _fold_residuals(self, s: float):
        theta, tdot = self.fold_solutions(s)
        e = self.r[None] - np.einsum(
            "ikp,fp->fik", self.jac, theta
        )  # (f, n, k): y − F under fold j
        de = -np.einsum("ikp,fp->fik", self.jac, tdot)  # its derivative in s
        return e, de

    def __call__(self, s: float) -> tuple[float, float]:
        """(CV(s), dCV/ds): the mean held-out squared error over validated rows and its
        derivative."""
        e, de = self._fold_residuals(s)
        count = max(self.val.sum(), 1.0)
        loss = np.einsum("fi,fik->", self.val, e**2) / count
        grad = np.einsum("fi,fik->", self.val, 2.0 * e * de) / count
        return float(loss), float(grad)

    def row_losses(self, s: float) -> np.ndarray:
        """(n,) each row's loss under the fold that held it out (0 for weight-0 rows)."""
        e, _ = self._fold_residuals(s)
        return np.einsum("fi,fik->i", self.val, e**2)

    # --- leave-one-out ----------------------------------------------------------------------------

    def _loo(self, s: float):
        """(leave-one-out residuals, their s-derivative), each (n, k)."""
        n, k, p = self.jac.shape
        m = self.full_gram + s * self.dmat
        theta, tdot = self.full_solution(s)
        e = self.r - self.jac @ theta
        de = -self.jac @ tdot
        minv_jt = np.linalg.solve(m, self.jac.reshape(n * k, p).T)  # M⁻¹ Jᵀ, (p, n·k)
        jm = minv_jt.T.reshape(n, k, p)  # rows of J M⁻¹
        lev = self.w[:, None, None] * np.einsum("ikp,ilp->ikl", self.jac, jm)
        dlev = -self.w[:, None, None] * np.einsum("ikp,pq,ilq->ikl", jm, self.dmat, jm)
        a = np.eye(k)[None] - lev
        loo = np.linalg.solve(a, e[..., None])[..., 0]
        dloo = np.linalg.solve(a, (np.einsum("ikl,il->ik", dlev, loo) + de)[..., None])[..., 0]
        return loo, dloo, e, lev

    def loocv(self, s: float) -> tuple[float, float]:
        """(LOOCV(s), dLOOCV/ds) over the rows of positive weight."""
        loo, dloo, _, _ = self._loo(s)
        count = max(self.active.sum(), 1)
        loss = np.sum(self.active[:, None] * loo**2) / count
        grad = np.sum(self.active[:, None] * 2.0 * loo * dloo) / count
        return float(loss), float(grad)

    def loo_rows(self, s: float) -> np.ndarray:
        """(n,) each row's leave-one-out loss (0 for weight-0 rows)."""
        loo, _, _, _ = self._loo(s)
        return np.where(self.active, np.sum(loo**2, axis=1), 0.0)

    def g_pert(self, s: float) -> float:
        """G_pert / n (eq. 44) at θ*(s): for the squared loss H = 2M and σ_i = −2J_iᵀe_i, so the
        self-influence w_i σ_iᵀH⁻¹σ_i is 2 e_iᵀ lev_i e_i."""
        _, _, e, lev = self._loo(s)
        count = max(self.active.sum(), 1)
        losses = self.w * np.sum(e**2, axis=1)
        si = 2.0 * np.einsum("ik,ikl,il->i", e, lev, e)
        return float((losses.sum() + si.sum()) / count)

    # --- the fit's spread over pool rows ---------------------------------------------------------

    def spread(self, s: float, jac_pool, offset_pool) -> float:
        """The variance of the full fit's first output over pool rows (given by their linear form)
        over the sample variance of the labels (``choose_s.pool_spread``)."""
        theta, _ = self.full_solution(s)
        pred = np.asarray(jac_pool, np.float64)[:, 0, :] @ theta + np.asarray(offset_pool)[:, 0]
        labels = self.y0[self.active]
        count = max(labels.size, 2)
        var_y = np.sum((labels - labels.mean()) ** 2) / (count - 1.0) if labels.size else 0.0
        return float(np.var(pred) / max(var_y, 1e-300))
