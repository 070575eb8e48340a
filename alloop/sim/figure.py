"""The paper's §3.3 example (its Figures 1 and 2), reproduced: ``alloop figure paper-1d``.

A degree-5 polynomial y = power(x)ᵀθ, power(x) = (1, x, …, x⁵) on raw x, fitted by ridge with the
paper's penalty s θᵀθ (every coefficient, the intercept too) to six points with a gap in the middle
(the seed labels of ``datasets/paper1d``). s minimizes the closed-form LOOCV error. The figure
shows:

- the points, the fit at s and the fit at s + δ (dashed);
- the SLD curve u(x)² with u(x) = power(x)ᵀθ̇, θ̇ = −(XᵀX + sI)⁻¹θ* (eq. 87), beside its
  finite-difference approximation ((F(x; s + δ) − F(x; s)) / δ)², and u(x) itself (which changes
  sign);
- the LOOCV error against s (the paper's Figure 2), with the chosen s marked.

SLD = 4σ²u² for squared loss; σ² is one number for all x, so the curve is drawn as u².
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from alloop.errors import UserError
from alloop.io import atomic, datasets
from alloop.sim import ridge as sim_learners

DEGREE = 5
S_GRID = np.logspace(-6, 2, 401)


def power(x: np.ndarray, degree: int = DEGREE) -> np.ndarray:
    """(n, degree + 1) matrix of 1, x, …, x^degree."""
    return np.asarray(x, np.float64)[:, None] ** np.arange(degree + 1)[None, :]


def seed_points(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The six seed labels of datasets/paper1d, with their x from the pool."""
    seeds, pool = folder / "seed_labels.parquet", folder / "pool.parquet"
    if not (seeds.exists() and pool.exists()):
        raise UserError(
            f"no paper1d dataset at {folder} (seed_labels.parquet and pool.parquet): rebuild "
            "it with python datasets/build.py paper1d"
        )
    s = pd.read_parquet(seeds)
    p = pd.read_parquet(pool, columns=["id", "x"]).set_index("id")
    return p.loc[s["id"].to_numpy(), "x"].to_numpy(np.float64), s["target"].to_numpy(np.float64)


def analyse(
    x: np.ndarray,
    y: np.ndarray,
    delta_ratio: float = 0.1,
    grid: np.ndarray = S_GRID,
    xs: np.ndarray | None = None,
) -> dict:
    """Everything the figure draws: s by LOOCV, fits at s and s + δ, u(x), its finite-difference
    estimate."""
    a, d = power(x), np.ones(DEGREE + 1)
    loocv = np.array([sim_learners.loocv_mse(a, y, float(s), d) for s in grid])
    s = float(grid[int(np.argmin(loocv))])
    delta = delta_ratio * s
    xs = np.linspace(x.min(), x.max(), 401) if xs is None else xs
    axs = power(xs)
    fit, fit_hi = sim_learners.fit_ridge(a, y, s, d), sim_learners.fit_ridge(a, y, s + delta, d)
    u = axs @ fit.tangent
    fd = (axs @ fit_hi.theta - axs @ fit.theta) / delta
    return {
        "x": x,
        "y": y,
        "xs": xs,
        "grid": grid,
        "loocv": loocv,
        "s": s,
        "delta": delta,
        "fit": axs @ fit.theta,
        "fit_hi": axs @ fit_hi.theta,
        "u": u,
        "fd": fd,
        "fd_rel_error": float(np.max(np.abs(fd**2 - u**2)) / np.max(u**2)),
        "sld_argmax_x": float(xs[int(np.argmax(u**2))]),
    }


def draw(res: dict, path: Path) -> None:
    """Three panels: data and fits, SLD and its finite-difference estimate, LOOCV against s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(
        3, 1, figsize=(7, 9.5), dpi=110, gridspec_kw={"height_ratios": [1.1, 1.1, 0.8]}
    )
    s, s_hi = res["s"], res["s"] + res["delta"]
    ax0.plot(res["xs"], res["fit"], color="tab:blue", lw=1.8, label=f"fit at s = {s:.3g} (LOOCV)")
    ax0.plot(
        res["xs"],
        res["fit_hi"],
        color="tab:blue",
        lw=1.2,
        ls="--",
        label=f"fit at s + δ = {s_hi:.3g}",
    )
    ax0.plot(res["x"], res["y"], "o", color="black", ms=7, label="six labeled points")
    ax0.set_ylabel("y")
    ax0.set_title("Degree-5 polynomial, six points with a gap (paper §3.3, Figure 1)")
    ax0.legend(fontsize=8)
    ax1.plot(
        res["xs"], res["u"] ** 2, color="black", lw=3.0, label="SLD / 4σ² = u(x)², u = power(x)ᵀθ̇"
    )
    ax1.plot(res["xs"], res["fd"] ** 2, color="red", lw=1.6, label="((F(x; s+δ) − F(x; s)) / δ)²")
    ax1.plot(res["xs"], res["u"], color="green", lw=1.4, label="u(x) = dF(x; θ*(s))/ds")
    ax1.axhline(0, color="gray", lw=0.6)
    ax1.set_xlabel("x")
    ax1.set_ylabel("regularity tangent response")
    ax1.legend(fontsize=8)
    ax2.loglog(res["grid"], res["loocv"], color="tab:purple")
    ax2.axvline(s, color="gray", ls=":", lw=1)
    ax2.set_xlabel("s")
    ax2.set_ylabel("LOOCV MSE")
    ax2.set_title("LOOCV error against the regularity (paper Figure 2)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes_atomic(path, buf.getvalue())


def paper_1d(folder: Path, out: Path, delta_ratio: float = 0.1) -> dict:
    """Draw the figure to ``out`` and return the numbers behind it."""
    if not delta_ratio > 0:
        raise UserError("--delta must be positive (a fraction of s, e.g. 0.1)")
    x, y = seed_points(folder)
    res = analyse(x, y, delta_ratio)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(res, out)
    return {
        "png": str(out),
        "s": res["s"],
        "delta": res["delta"],
        "fd_rel_error": res["fd_rel_error"],
        "sld_argmax_x": res["sld_argmax_x"],
    }


FIGURES = ("paper-1d",)


def draw_named(name: str, out: Path, delta_ratio: float = 0.1) -> dict:
    """``alloop figure NAME``: draw one of the paper's figures from the bundled data."""
    if name not in FIGURES:
        raise UserError(f"unknown figure {name!r}: choose {', '.join(FIGURES)}")
    return paper_1d(datasets.datasets_dir() / "paper1d", out, delta_ratio)
