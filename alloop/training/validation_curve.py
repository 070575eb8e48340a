"""The validation curve of s (the paper's Figure 2): the CV error over a log grid, with closed-form
LOOCV and G_pert (eq. 44) beside it where they are tractable, and the s the search chooses;
``plot_png`` draws it (``alloop tune-s``). No files here: the caller writes the PNG's bytes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alloop.config import RunConfig
from alloop.core import hyper
from alloop.training.choose_s import Choice, choose_s, evaluator, tune_config


class Curve(NamedTuple):
    s: np.ndarray
    cv: np.ndarray  # the cross-validated loss the choice minimizes
    cv_label: str
    loocv: np.ndarray | None  # closed-form LOOCV (linear/poly)
    g_pert: np.ndarray | None  # G_pert / n (eq. 44), where the dense Hessian is tractable
    folds: int
    route: str
    choice: Choice

    def local_minima(self) -> list[float]:
        """Grid values of s where the CV loss is lower than at both neighbours (ends included)."""
        v = np.asarray(self.cv)
        left = np.r_[np.inf, v[:-1]]
        right = np.r_[v[1:], np.inf]
        return [float(s) for s, a, b, c in zip(self.s, left, v, right) if b < a and b < c]

    def to_dict(self) -> dict:
        opt = lambda a: None if a is None else [float(v) for v in a]  # noqa: E731
        return {
            "s": opt(self.s),
            "cv": opt(self.cv),
            "cv_label": self.cv_label,
            "loocv": opt(self.loocv),
            "g_pert": opt(self.g_pert),
            "folds": self.folds,
            "route": self.route,
            "local_minima": self.local_minima(),
            "choice": self.choice.record(),
        }


def validation_curve(
    config: RunConfig,
    x,
    y,
    grid,
    *,
    s_prev: float | None = None,
    params=None,
    tangent=None,
    mode: str = "auto",
) -> Curve:
    """The criterion ``mode`` minimizes over ``grid`` (k-fold CV, or closed-form LOOCV for "loocv"),
    with closed-form LOOCV and G_pert beside it where tractable, and the s the mode chooses (auto
    shares the grid's fold trainings).
    """
    tc = tune_config(config)
    route, ev, k = evaluator(config, x, y, tc, params, tangent, full=True)
    grid = np.asarray(grid, np.float64)
    s0 = float(s_prev) if s_prev is not None else tc.s_init
    order = np.argsort(
        np.abs(np.log(grid / s0))
    )  # outward from s0: each point continues its neighbour
    cv = np.empty(len(grid))
    for i in order:
        cv[i] = ev(float(grid[i]))[0]
    loo = gp = None
    if route == "exact":
        loo = np.array([ev.loocv(float(s))[0] for s in grid])
        gp = np.array([ev.g_pert(float(s)) for s in grid])
    elif hyper.g_pert_tractable(ev.start[0]):
        gp = np.array(
            [
                hyper.g_pert(ev.problem, ev.full_params(float(s)), float(s), ev.data).value
                for s in grid
            ]
        )
    choice = choose_s(
        config, x, y, mode=mode, s_prev=s0, tc=tc, ev=None if mode == "loocv" else (route, ev, k)
    )
    label = ("LOOCV" if k == len(x) else f"{k}-fold CV") + (
        " (exact)" if route == "exact" else " (SGDF)"
    )
    if mode == "loocv":
        cv, label, k = loo, "LOOCV (closed form)", len(x)
    return Curve(grid, cv, label, loo, gp, k, route, choice)


def plot_png(curve: Curve, title: str = "") -> bytes:
    """The validation error against s (log axis), local minima and the chosen s marked: PNG
    bytes."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    ax.semilogx(curve.s, curve.cv, "-", color="C0", lw=2, label=curve.cv_label)
    if curve.loocv is not None and not curve.cv_label.startswith("LOOCV"):
        ax.semilogx(curve.s, curve.loocv, "--", color="C2", label="LOOCV (closed form)")
    if curve.g_pert is not None:
        ax.semilogx(curve.s, curve.g_pert, ":", color="C3", lw=1.5, label="G_pert (eq. 44)")
    mins = curve.local_minima()
    if mins:
        idx = [int(np.argmin(np.abs(curve.s - m))) for m in mins]
        ax.plot(
            curve.s[idx], curve.cv[idx], "o", mfc="none", color="C0", label="local minima (grid)"
        )
    c = curve.choice
    ax.axvline(c.s, color="k", lw=1, ls="--")
    ax.plot([c.s], [c.cv_loss], "*", color="k", ms=12, label=f"chosen s = {c.s:.4g} ({c.mode})")
    ax.set_xlabel("regularity s")
    ax.set_ylabel("validation loss (mean per row)")
    ax.set_title(title or "Validation error against s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
