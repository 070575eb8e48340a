"""What a simulation's learning curves say: the summary figures, summary.md/json and the plot.

Lower metric is better (test RMSE, or the test error rate for classification). Per strategy, against
``random``:

- ``relative_area``: the area under its mean learning curve (trapezoids over the label counts)
  divided by random's; below 1 is better. ``relative_area_se`` is the standard error of the same
  ratio computed per repetition (paired: both start from the repetition's initial labels).
- ``labels_to_match_random``: the fewest labels at which its mean curve reaches random's final
  (mean) metric, or None if it never does within the budget.
- ``wins``/``losses``: repetitions whose area is below/above random's in the same repetition.

And per strategy and stopping rule (``training.stopping``, replayed over each repetition's recorded
signals): in how many repetitions the rule stopped before the budget, the labels spent (the budget
where it never stopped), the labels saved, and the error given up: the metric where it stopped
relative to the same repetition's metric at the full budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alloop.io import atomic
from alloop.training import stopping

REFERENCE = "random"


def area(n_labels: np.ndarray, metric: np.ndarray) -> float:
    """Area under a learning curve by the trapezoid rule over the label counts."""
    n, m = np.asarray(n_labels, np.float64), np.asarray(metric, np.float64)
    return float(np.sum(np.diff(n) * (m[1:] + m[:-1]) / 2.0))


def curve_table(rows: list[dict], strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """(label counts, metric[rep, step]) of one strategy, repetitions in order."""
    mine = [r for r in rows if r["strategy"] == strategy]
    reps = sorted({r["rep"] for r in mine})
    n = np.array(sorted({r["n_labels"] for r in mine}))
    m = np.full((len(reps), len(n)), np.nan)
    ri, ni = {r: i for i, r in enumerate(reps)}, {v: i for i, v in enumerate(n)}
    for r in mine:
        m[ri[r["rep"]], ni[r["n_labels"]]] = r["metric"]
    return n, m


def milestones(n: np.ndarray, count: int = 4) -> list[int]:
    """A few label counts to tabulate: the first, the last, and those nearest to even fractions of
    the last."""
    targets = [n[0]] + [n[-1] * f for f in np.linspace(0, 1, count)[1:]]
    picks = sorted({int(n[np.argmin(np.abs(n - t))]) for t in targets})
    return picks


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def strategy_summary(rows: list[dict], strategy: str, reference: tuple | None) -> dict:
    """The figures of one strategy; ``reference`` is random's (label counts, metric table) or
    None."""
    n, m = curve_table(rows, strategy)
    mean = m.mean(axis=0)
    per_rep_area = np.array([area(n, row) for row in m])
    seconds = [r["seconds"] for r in rows if r["strategy"] == strategy]
    out = {
        "reps": int(m.shape[0]),
        "at": {
            str(k): {"mean": float(mean[list(n).index(k)]), "se": _se(m[:, list(n).index(k)])}
            for k in milestones(n)
        },
        "final": float(mean[-1]),
        "area": float(per_rep_area.mean()),
        "seconds_per_round": float(np.mean(seconds)),
    }
    if reference is not None:
        rn, rm = reference
        ref_area = np.array([area(rn, row) for row in rm])
        paired = min(len(ref_area), len(per_rep_area))
        ratio = per_rep_area[:paired] / ref_area[:paired]
        reached = np.flatnonzero(mean <= rm.mean(axis=0)[-1])
        out.update(
            relative_area=float(per_rep_area.mean() / ref_area.mean()),
            relative_area_se=_se(ratio),
            labels_to_match_random=int(n[reached[0]]) if len(reached) else None,
            wins=int(np.sum(ratio < 1.0)),
            losses=int(np.sum(ratio > 1.0)),
        )
    return out


METRIC_LABEL = {"rmse": "Test RMSE", "error": "Test error rate"}


def stop_summary(
    rows: list[dict], strategy: str, task: str, rules: stopping.StopRules
) -> dict | None:
    """Each stopping rule of the task replayed over every repetition of one strategy; None without
    signals."""
    reps: dict[int, list[dict]] = {}
    for r in sorted(
        (r for r in rows if r["strategy"] == strategy), key=lambda r: (r["rep"], r["n_labels"])
    ):
        reps.setdefault(r["rep"], []).append(r)
    reps = {
        k: v
        for k, v in reps.items()
        if any(r.get(c) is not None for r in v for c in stopping.SIGNALS)
    }
    if not reps:
        return None
    out = {}
    for rule in stopping.rules_for(task):
        spent, saved, given_up, given_up_abs, stopped = [], [], [], [], 0
        for curve in reps.values():
            history = [
                {"labels": r["n_labels"], **{k: r.get(k) for k in stopping.SIGNALS}} for r in curve
            ]
            at = stopping.stop_rounds(history, task, rules)[rule]
            i = len(curve) - 1 if at is None else at
            stopped += at is not None and i < len(curve) - 1
            spent.append(curve[i]["n_labels"])
            saved.append(curve[-1]["n_labels"] - curve[i]["n_labels"])
            final = curve[-1]["metric"]
            given_up.append(curve[i]["metric"] / final - 1.0 if final > 0 else 0.0)
            given_up_abs.append(curve[i]["metric"] - final)
        out[rule] = {
            "reps": len(reps),
            "stopped": int(stopped),
            "labels": float(np.mean(spent)),
            "labels_saved": float(np.mean(saved)),
            "error_given_up": float(np.mean(given_up)),
            "error_given_up_max": float(np.max(given_up)),
            "error_given_up_abs": float(np.mean(given_up_abs)),
            "error_given_up_abs_max": float(np.max(given_up_abs)),
        }
    return out


def summarize(
    rows: list[dict],
    strategy_list: list[str],
    settings,
    name: str,
    metric: str = "rmse",
    rules: stopping.StopRules | None = None,
) -> dict:
    """Figures for every strategy, relative to random when random was run, and what each stopping
    rule would have done."""
    ref = curve_table(rows, REFERENCE) if any(r["strategy"] == REFERENCE for r in rows) else None
    rules = rules or stopping.StopRules()
    task = settings.to_dict().get("task", "regression")
    stops = {s: stop_summary(rows, s, task, rules) for s in strategy_list}
    return {
        "dataset": name,
        "metric": metric,
        "settings": settings.to_dict(),
        "reference": REFERENCE if ref is not None else None,
        "strategies": {s: strategy_summary(rows, s, ref) for s in strategy_list},
        "stopping": {
            "thresholds": rules.to_dict(),
            "primary": stopping.PRIMARY.get(task),
            "strategies": {s: v for s, v in stops.items() if v},
        },
    }


def markdown(summary: dict) -> str:
    """summary.md: one table, strategies by relative area (best first)."""
    strat = summary["strategies"]
    first = next(iter(strat.values()))
    cols = list(first["at"])
    has_ref = summary["reference"] is not None
    order = sorted(strat, key=lambda s: strat[s].get("relative_area", strat[s]["area"]))
    st = summary["settings"]
    lines = [
        f"# Simulation: {summary['dataset']}",
        "",
        f"{METRIC_LABEL.get(summary.get('metric'), 'Test metric')} (mean ± s.e. over "
        f"{first['reps']} repetitions) after n labels; model {st['model']}, s = {st['s']}, "
        f"{st['initial']} initial random labels, batches of {st['batch']}, seed {st['seed']}.",
        "",
    ]
    head = ["strategy", *[f"n={c}" for c in cols]]
    if has_ref:
        head += ["area / random", "labels to random's final", "wins–losses vs random"]
    head += ["s / round"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in order:
        f = strat[s]
        cells = [s, *[f"{f['at'][c]['mean']:.4g} ± {f['at'][c]['se']:.2g}" for c in cols]]
        if has_ref:
            reach = f["labels_to_match_random"]
            cells += [
                f"{f['relative_area']:.3f} ± {f['relative_area_se']:.3f}",
                "—" if reach is None else str(reach),
                f"{f['wins']}–{f['losses']}",
            ]
        cells += [f"{f['seconds_per_round']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if not has_ref:
        lines += ["", "random was not run, so there are no figures relative to it."]
    lines += stop_markdown(summary)
    return "\n".join(lines) + "\n"


def stop_markdown(summary: dict) -> list[str]:
    """The stopping table: per strategy and rule, where it stopped and what that cost."""
    stop = summary.get("stopping") or {}
    if not stop.get("strategies"):
        return []
    th = ", ".join(f"{k}={v:g}" for k, v in stop["thresholds"].items())
    points = (
        summary.get("metric") == "error"
    )  # error rates: given up in percentage points, not relative to a small rate
    what = (
        (
            "the test error rate there minus the same repetition's at the full budget, in "
            "percentage points"
        )
        if points
        else "the test metric there relative to the same repetition's at the full budget"
    )
    lines = [
        "",
        f"Stopping rules (alloop status's decision is {stop['primary']}; thresholds {th}): where "
        f"each would have stopped, the labels it saved, and {what}.",
        "",
        "| strategy | rule | stopped before the budget | labels spent | labels saved | error "
        "given up (mean, worst) |",
        "|---|---|---|---|---|---|",
    ]
    for s, rules in stop["strategies"].items():
        for rule, f in rules.items():
            lines.append(
                f"| {s} | {rule} | {f['stopped']}/{f['reps']} | {f['labels']:.0f} | "
                f"{f['labels_saved']:.0f} | {given_up(f, points)} |"
            )
    return lines


def given_up(f: dict, points: bool) -> str:
    """The error a stopping rule gave up, as the stop tables print it: relative, or in percentage
    points for error rates."""
    if points:
        return (
            f"{100 * f['error_given_up_abs']:+.1f} pt, {100 * f['error_given_up_abs_max']:+.1f} pt"
        )
    return f"{f['error_given_up']:+.1%}, {f['error_given_up_max']:+.1%}"


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    """Mean learning curves with ±1 s.e. bands, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    lows, highs = [], []
    for i, s in enumerate(summary["strategies"]):
        n, m = curve_table(rows, s)
        mean = m.mean(axis=0)
        se = m.std(axis=0, ddof=1) / np.sqrt(len(m)) if len(m) > 1 else np.zeros_like(mean)
        style = {
            "color": plt.cm.tab10(i % 10),
            "linestyle": ("-", "-.", ":")[(i // 10) % 3],
            "lw": 2.4 if s == "sld" else 1.4,
        }
        if s == REFERENCE:
            style.update(color="black", linestyle="--", lw=1.8)
        ax.plot(n, mean, label=s, **style)
        ax.fill_between(n, mean - se, mean + se, alpha=0.15, color=style["color"], lw=0)
        lows.append(mean.min())
        highs.append(mean.max())
    if max(highs) > 2.5 * min(lows) > 0:  # a steep first drop would flatten the rest of the curves
        ax.set_yscale("log")
    ax.set_xlabel("labels")
    ax.set_ylabel(METRIC_LABEL.get(summary.get("metric"), "test metric"))
    st = summary["settings"]
    model = st["model"].get("kind", "linear") + (
        f" {st['model']['degree']}" if st["model"].get("kind") == "poly" else ""
    )
    reps = next(iter(summary["strategies"].values()))["reps"]
    ax.set_title(
        f"{summary['dataset']}: {model}, s = {st['s']}, batches of {st['batch']}; mean of "
        f"{reps} repetitions (±1 s.e.)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    buf = _png_bytes(fig)
    plt.close(fig)
    atomic.write_bytes_atomic(path, buf)


def _png_bytes(fig) -> bytes:
    import io

    b = io.BytesIO()
    fig.savefig(b, format="png", metadata={"Software": None})
    return b.getvalue()


def write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    atomic.write_text_atomic(
        out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n"
    )
    atomic.write_text_atomic(out / "summary.md", markdown(summary))
    plot(rows, summary, out / "curves.png")
