"""The uniform share of a mixed batch, chosen by what the labeled data say.

A mixed batch draws some rows uniformly from the pool and the rest by an active strategy. Whether an
active label is worth more than a uniform one differs by table: a misspecified model fitted on
leverage-seeking picks gets worse on the pool's typical rows (docs/results.md). So the share is
measured, not fixed. The uniform rows among the labels are an unbiased sample of the pool. Each fold
of them is held out in turn; the other uniform rows are split into a base and m rows set aside, and
a ridge proxy (standardized inputs, its penalty chosen by LOOCV on all labels) is fitted twice on
the base: once with the m uniform rows set aside, once with m of the active rows instead. On the
held-out rows the two losses say which kind of label lowers the pool's error more, at the same
count. The share is the bootstrap probability (over the held-out rows) that the uniform ones do:
Thompson sampling between the two ways of choosing, held within [SHARE_FLOOR, 1 − SHARE_FLOOR] so
that both keep being measured. With too few uniform rows, or no active one yet, it is SHARE_PRIOR.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SHARE_PRIOR = 0.5  # no evidence yet: neither way of choosing is favoured
SHARE_FLOOR = 0.1  # the share stays within [floor, 1 − floor]
MIN_UNIFORM = 6  # uniform labels needed before the held-out comparison runs
FOLDS = 5
BOOTSTRAP = 200
DRAWS = 4  # splits of the other uniform rows per fold, averaged
LAMBDAS = np.logspace(-3, 3, 13)


class ShareEvidence(NamedTuple):
    """The chosen share and what it came from. ``advantage``: 1 − (held-out loss with m active rows
    added) / (with m uniform rows added), positive where the active labels did better; NaN without
    evidence."""

    share: float
    advantage: float
    n_uniform: int
    n_active: int


def choose_share(
    z: np.ndarray, y: np.ndarray, uniform: np.ndarray, rng: np.random.Generator
) -> ShareEvidence:
    """The uniform share for the next batch from labeled rows ``z`` (standardized inputs), labels
    ``y`` and ``uniform`` (True where the row was drawn uniformly from the pool)."""
    z, y, uniform = (
        np.asarray(z, np.float64),
        np.asarray(y, np.float64).ravel(),
        np.asarray(uniform, bool),
    )
    n_u, n_a = int(uniform.sum()), int((~uniform).sum())
    if n_u < MIN_UNIFORM or n_a == 0 or np.std(y) == 0:
        return ShareEvidence(SHARE_PRIOR, float("nan"), n_u, n_a)
    y = (y - y.mean()) / y.std()
    losses = held_out_losses(z, y, uniform, loocv_lambda(z, y), rng)
    mean = losses.mean(axis=0)
    boot = losses[rng.integers(0, len(losses), size=(BOOTSTRAP, len(losses)))].mean(
        axis=1
    )  # (BOOTSTRAP, 2)
    share = float(np.clip(np.mean(boot[:, 0] < boot[:, 1]), SHARE_FLOOR, 1.0 - SHARE_FLOOR))
    return ShareEvidence(
        share, float(1.0 - mean[1] / mean[0]) if mean[0] > 0 else float("nan"), n_u, n_a
    )


def held_out_losses(
    z: np.ndarray, y: np.ndarray, uniform: np.ndarray, lam: float, rng: np.random.Generator
) -> np.ndarray:
    """(n_uniform, 2): each uniform row's squared error, held out, of the ridge fitted on a base of
    other uniform rows plus m more uniform rows (column 0) or plus m active rows (column 1);
    averaged over DRAWS splits."""
    u_idx, a_idx = np.flatnonzero(uniform), np.flatnonzero(~uniform)
    folds = min(FOLDS, len(u_idx) // 2)
    fold = rng.permutation(len(u_idx)) % folds
    losses = np.zeros((len(u_idx), 2))
    for f in range(folds):
        test, train = u_idx[fold == f], u_idx[fold != f]
        m = min(len(a_idx), len(train) // 2)
        for _ in range(DRAWS):
            split = rng.permutation(train)
            base, aside, active = split[m:], split[:m], rng.choice(a_idx, m, replace=False)
            for col, extra in enumerate((aside, active)):
                rows = np.concatenate([base, extra])
                losses[fold == f, col] += (
                    ridge_predict(z[rows], y[rows], z[test], lam) - y[test]
                ) ** 2 / DRAWS
    return losses


def ridge_predict(z: np.ndarray, y: np.ndarray, z_new: np.ndarray, lam: float) -> np.ndarray:
    """Ridge with an unpenalized intercept (centered on the training rows), fitted on (z, y), at
    ``z_new``."""
    mz, my = z.mean(axis=0), y.mean()
    zc = z - mz
    beta = np.linalg.solve(zc.T @ zc + lam * np.eye(z.shape[1]), zc.T @ (y - my))
    return my + (z_new - mz) @ beta


def loocv_lambda(z: np.ndarray, y: np.ndarray) -> float:
    """The ridge penalty of LAMBDAS with the lowest leave-one-out error on (z, y)."""
    return float(LAMBDAS[int(np.argmin(loo_errors(z, y)))])


def loo_errors(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean squared leave-one-out error of ``ridge_predict`` at each of LAMBDAS, in closed form (the
    hat matrix)."""
    zc, yc = z - z.mean(axis=0), y - y.mean()
    u, sv, _ = np.linalg.svd(zc, full_matrices=False)
    uy = u.T @ yc
    errors = []
    for lam in LAMBDAS:
        shrink = sv**2 / (sv**2 + lam)
        hat = (u**2) @ shrink + 1.0 / len(y)  # the intercept adds 1/n to every leverage
        errors.append(np.mean(((yc - u @ (shrink * uy)) / np.maximum(1.0 - hat, 1e-12)) ** 2))
    return np.asarray(errors)
