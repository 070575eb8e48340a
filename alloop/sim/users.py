"""Simulated users of one base model: do inherited runs beat cold-started ones in the first rounds?

A dataset is split into groups that stand for users (by quantiles of one feature, so each user's
data is shifted from the rest). For each user, a base model is fitted on labels drawn from the
other users' rows; then the user labels ``k`` rows per round from its own pool:

- ``inherited``: anchored to the base (``regularizers.inherited_anchor``); the first query ranks by
  the base's SLD (θ̇ = θ̇0 with no labels), later ones by the user model's own tangent;
- ``inherited-random``: the same model, rows drawn at random (separates the anchor from the query);
- ``cold``: a fresh L2 model; greedy farthest-point sampling at cold start, then SLD;
- ``cold-random``: a fresh model, random rows.

Models are linear and solved exactly (the closed forms below are what ``second_order.fit`` converges
to with these regularizers; tests/test_inheritance.py checks that path), so figures do not depend on
SGD noise. The test error is measured on the user's own held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from alloop.core import ranking
from alloop.errors import UserError
from alloop.io import datasets, tables

VARIANTS = ("inherited", "inherited-random", "cold", "cold-random")


@dataclass(frozen=True)
class UsersConfig:
    groups: int = 4
    by: str | None = None  # feature whose quantiles define the users (default: the first)
    base_labels: int = 200
    rounds: int = 4
    k: int = 5
    s: float = 1.0
    reps: int = 5
    seed: int = 0


class Fit(NamedTuple):
    theta: np.ndarray  # [w; b]
    tangent: np.ndarray


def _design(x: np.ndarray) -> np.ndarray:
    return np.c_[x, np.ones(len(x))]


def fit_l2(x, y, s) -> Fit:
    """Ridge with unregularized bias: θ = (AᵀA + sD)⁻¹Aᵀy, θ̇ = −(AᵀA + sD)⁻¹Dθ."""
    a = _design(x)
    dmat = np.diag([1.0] * x.shape[1] + [0.0])
    m = a.T @ a + s * dmat
    theta = np.linalg.solve(m, a.T @ y)
    return Fit(theta, -np.linalg.solve(m, dmat @ theta))


def fit_inherited(x, y, s, base: Fit) -> Fit:
    """Σ(Aθ − y)² + s||θ − θ0(s)||²: θ = (AᵀA + sI)⁻¹(Aᵀy + sθ0), θ̇ = (AᵀA + sI)⁻¹(sθ̇0 − (θ −
    θ0))."""
    a = _design(x)
    m = a.T @ a + s * np.eye(a.shape[1])
    theta = np.linalg.solve(m, a.T @ y + s * base.theta)
    return Fit(theta, np.linalg.solve(m, s * base.tangent - (theta - base.theta)))


def _rmse(fit: Fit, x, y) -> float:
    return float(np.sqrt(np.mean((_design(x) @ fit.theta - y) ** 2)))


def _sld_pick(fit: Fit, x, avail, k) -> np.ndarray:
    """Top-k SLD: for a linear model u(x) = [x, 1]·θ̇ and SLD ∝ u²."""
    scores = (_design(x[avail]) @ fit.tangent) ** 2
    return avail[np.lexsort((avail, -scores))[:k]]


def _user_curve(variant, x, y, xt, yt, base, cfg: UsersConfig, rng) -> list[float]:
    inherited = variant.startswith("inherited")
    fit = base if inherited else None  # no labels: the inherited optimum is θ0 with tangent θ̇0
    labeled = np.zeros(0, np.int64)
    curve = []
    for r in range(cfg.rounds):  # noqa: B007
        avail = np.setdiff1d(np.arange(len(x)), labeled)
        if variant.endswith("random"):
            pick = rng.choice(avail, size=cfg.k, replace=False)
        elif fit is None:  # cold start: greedy farthest point in (already standardized) features
            d0 = (
                np.full(len(avail), np.inf)
                if not len(labeled)
                else np.min(np.linalg.norm(x[avail][:, None] - x[labeled][None], axis=2), axis=1)
            )
            pick = avail[ranking.farthest_point(x[avail], d0, cfg.k)]
        else:
            pick = _sld_pick(fit, x, avail, cfg.k)
        labeled = np.concatenate([labeled, pick])
        fit = (
            fit_inherited(x[labeled], y[labeled], cfg.s, base)
            if inherited
            else fit_l2(x[labeled], y[labeled], cfg.s)
        )
        curve.append(_rmse(fit, xt, yt))
    return curve


def run_users(
    pool: pd.DataFrame, test: pd.DataFrame, features: list[str], target: str, cfg: UsersConfig
) -> pd.DataFrame:
    """Learning curves (variant, user, rep, n_labels, rmse) in the target's units."""
    by = cfg.by or features[0]
    mean, std = pool[features].mean().to_numpy(), pool[features].std().to_numpy()
    z = lambda df: ((df[features].to_numpy() - mean) / std).astype(np.float32)  # noqa: E731
    edges = np.quantile(pool[by], np.linspace(0, 1, cfg.groups + 1)[1:-1])
    group, tgroup = np.digitize(pool[by], edges), np.digitize(test[by], edges)
    x, xt = z(pool).astype(np.float64), z(test).astype(np.float64)
    y_all, yt_all = pool[target].to_numpy(np.float64), test[target].to_numpy(np.float64)
    rows = []
    for rep in range(cfg.reps):
        for g in range(cfg.groups):
            rng = np.random.default_rng([cfg.seed, rep, g])
            others = np.flatnonzero(group != g)
            base_idx = rng.choice(others, size=min(cfg.base_labels, len(others)), replace=False)
            mu, sd = y_all[base_idx].mean(), y_all[base_idx].std()
            scale = lambda v: (v - mu) / sd  # noqa: E731, B023
            base = fit_l2(x[base_idx], scale(y_all[base_idx]), cfg.s)
            mine, mine_t = np.flatnonzero(group == g), np.flatnonzero(tgroup == g)
            for v in VARIANTS:
                curve = _user_curve(
                    v,
                    x[mine],
                    scale(y_all[mine]),
                    xt[mine_t],
                    scale(yt_all[mine_t]),
                    base,
                    cfg,
                    np.random.default_rng([cfg.seed, rep, g, VARIANTS.index(v)]),
                )
                rows += [
                    {
                        "variant": v,
                        "user": g,
                        "rep": rep,
                        "n_labels": (r + 1) * cfg.k,
                        "rmse": e * sd,
                    }
                    for r, e in enumerate(curve)
                ]
    return pd.DataFrame(rows)


def summarize(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean RMSE per variant and label count, and each variant's ratio to the cold start."""
    table = curves.groupby(["variant", "n_labels"])["rmse"].mean().unstack("n_labels")
    return table.loc[[v for v in VARIANTS if v in table.index]]


__all__ = ["UsersConfig", "run_users", "summarize", "VARIANTS"]


def on_dataset(dataset: str, cfg: UsersConfig, out: str | None = None) -> tuple[dict, str]:
    """``alloop simulate-users`` on a bundled regression dataset: (result for --json, the table as
    text)."""
    meta = datasets.dataset_meta(dataset)
    if meta.get("task", "regression") != "regression":
        raise UserError(f"simulate-users takes a regression dataset; '{dataset}' is {meta['task']}")
    if min(cfg.groups, cfg.rounds, cfg.k, cfg.reps, cfg.base_labels) < 1:
        raise UserError("--groups, --rounds, -k, --reps and --base-labels must be at least 1")
    if cfg.by is not None and cfg.by not in meta["features"]:
        raise UserError(
            f"--by {cfg.by!r} is not a feature of {dataset} ({', '.join(meta['features'])})"
        )
    folder = datasets.datasets_dir() / dataset
    curves = run_users(
        tables.read_table(folder / "pool.parquet"),
        tables.read_table(folder / "test.parquet"),
        meta["features"],
        meta["target"],
        cfg,
    )
    if out:
        curves.to_csv(out, index=False)
    table = summarize(curves)
    res = {
        "dataset": dataset,
        "mean_test_rmse": {
            v: {int(n): float(e) for n, e in row.items()} for v, row in table.iterrows()
        },
    }
    return res, table.round(4).to_string()
