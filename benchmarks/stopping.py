"""When to stop: the stopping rules of ``alloop status``, validated by simulation on the bundled
datasets.

    # simulate (resumable), choose thresholds, print the tables
    python benchmarks/stopping.py
    # and rewrite docs/results.md's stopping section
    python benchmarks/stopping.py --doc

For every bundled dataset, ``alloop simulate`` runs the live default strategy (``herding`` for
regression, ``margin`` for classification) and ``random`` from 10 random labels in batches of 10 up
to 200 labels (or three quarters of a smaller pool), ``--reps`` repetitions; each round records the
stopping signals a run records (``alloop/sim/simulate.py``). Each rule is then replayed over those
signals for a grid of thresholds (``training.stopping.stop_rounds``; nothing is simulated again),
and per rule the threshold that saves the most labels on average is chosen among those whose mean
error given up (the test metric where the rule stopped, relative to the same repetition's at the
full budget; for classification the error rate's difference in percentage points) is at most
``--tolerance`` (2%) or ``--tolerance-points`` (0.5 points) on every bundled dataset of the task.
The tables report, for the chosen thresholds and for each dataset and strategy, how often the rule
stopped before the budget, the labels it spent and saved, and the error it gave up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from alloop.sim import simulate as sim  # noqa: E402
from alloop.sim import summary as sim_summary  # noqa: E402
from alloop.training import stopping  # noqa: E402

DATASETS = {
    "regression": ("diabetes", "concrete", "powerplant"),
    "classification": ("breast_cancer", "digits", "wine"),
}
GRID = {  # per rule: the thresholds it reads, and the values tried
    "stable_predictions": {
        "change_threshold": (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1),
        "change_rounds": (1, 2, 3),
    },
    "cv_plateau": {
        "cv_tolerance": (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02),
        "cv_window": (2, 3, 4, 5, 6, 8),
    },
    "sld_fall": {"sld_fraction": (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)},
    "kappa": {
        "kappa_threshold": (0.9, 0.95, 0.97, 0.99, 0.995, 0.999),
        "kappa_window": (1, 2, 3, 4, 5),
    },
}
BEGIN, END = (
    "<!-- stopping:begin (benchmarks/stopping.py --doc writes this part) -->",
    "<!-- stopping:end -->",
)
RESULTS = ROOT / "docs" / "results.md"


def run(name: str, reps: int, out: Path, jobs: int) -> list[dict]:
    """The dataset's curves with their signals (simulated once; a rerun resumes)."""
    meta = json.loads((ROOT / "datasets" / name / "meta.json").read_text())
    task, n_pool = meta.get("task", "regression"), int(meta["n_pool"])
    budget = int(min(200, (n_pool * 3 // 4) // 10 * 10))
    default = sim.strategies.default_for(task)
    sim.run_simulation(
        dataset=name,
        strategy_list=[default, "random"],
        reps=reps,
        out=str(out / name),
        jobs=jobs,
        budget=budget,
    )
    expected = sim.schedule(sim.SimSettings(budget=budget), n_pool)
    done = sim.read_curves(out / name / sim.CURVES_FILE, expected)
    return [r for rows in done.values() for r in rows if r["rep"] < reps]


def replay(rows: list[dict], task: str, rules: stopping.StopRules) -> dict:
    """{strategy: {rule: figures}} for one dataset under ``rules``."""
    names = sorted({r["strategy"] for r in rows})
    return {s: sim_summary.stop_summary(rows, s, task, rules) for s in names}


def given_up(f: dict, task: str) -> float:
    """What a tolerance bounds: relative error for regression, error-rate points for
    classification."""
    return f["error_given_up_abs"] if task == "classification" else f["error_given_up"]


def choose(curves: dict[str, list[dict]], task: str, tolerance: float, strategy: str) -> dict:
    """Per rule of the task: the grid thresholds saving the most labels with mean error given up ≤
    tolerance on every dataset."""
    chosen = {}
    for rule in stopping.rules_for(task):
        grid = GRID[rule]
        best = None
        for values in itertools.product(*grid.values()):
            th = dict(zip(grid, values))
            rules = stopping.StopRules.from_dict(th)
            figs = [
                replay([r for r in rows if r["strategy"] == strategy], task, rules)[strategy][rule]
                for rows in curves.values()
            ]
            worst = max(given_up(f, task) for f in figs)
            saved = float(np.mean([f["labels_saved"] for f in figs]))
            if worst <= tolerance and (best is None or saved > best[0]):
                best = (saved, th)
        chosen[rule] = None if best is None else best[1]
    return chosen


def table(curves: dict[str, list[dict]], task: str, chosen: dict) -> list[str]:
    lines = [
        "| dataset | strategy | rule | thresholds | stopped before the budget | labels spent "
        "| labels saved | error given up (mean, worst) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in curves.items():
        for rule in stopping.rules_for(task):
            th = chosen.get(rule)
            label = (
                "none meets the tolerance: defaults"
                if th is None
                else ", ".join(f"{k}={v:g}" for k, v in th.items())
            )
            figs = replay(rows, task, stopping.StopRules.from_dict(th or {}))
            for strategy, f in figs.items():
                if f is None:
                    continue
                f = f[rule]
                lines.append(
                    f"| {name} | {strategy} | {rule} | {label} | {f['stopped']}/{f['reps']} | "
                    f"{f['labels']:.0f} | {f['labels_saved']:.0f} | "
                    f"{sim_summary.given_up(f, task == 'classification')} |"
                )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="largest mean relative error given up allowed on any bundled regression dataset",
    )
    ap.add_argument(
        "--tolerance-points",
        type=float,
        default=0.005,
        help="the same for classification, in error-rate points (0.005: half a point)",
    )
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "stopping"))
    ap.add_argument("--doc", action="store_true", help="rewrite docs/results.md's stopping section")
    args = ap.parse_args()
    out = Path(args.out)
    text = [
        f"{args.reps} repetitions per dataset; thresholds chosen per rule on the live default "
        f"strategy's curves (most labels saved with mean error given up ≤ {args.tolerance:.0%} "
        f"on every bundled regression dataset, ≤ {100 * args.tolerance_points:g} points of error "
        "rate on every classification one), then reported for it and for random sampling. "
        "Defaults of `alloop status` are in `alloop/training/stopping.py` (`StopRules`).",
        "",
    ]
    for task, names in DATASETS.items():
        curves = {n: run(n, args.reps, out, args.jobs) for n in names}
        default = sim.strategies.default_for(task)
        chosen = choose(
            curves,
            task,
            args.tolerance_points if task == "classification" else args.tolerance,
            default,
        )
        text += [
            f"**{task}** (default strategy `{default}`): chosen thresholds "
            + "; ".join(
                f"{rule}: "
                + (
                    "none meets the tolerance"
                    if th is None
                    else ", ".join(f"{k}={v:g}" for k, v in th.items())
                )
                for rule, th in chosen.items()
            ),
            "",
        ]
        text += table(curves, task, chosen) + [""]
        print("\n".join(text[-(len(curves) * 6 + 4) :]), flush=True)
    body = "\n".join(text)
    (out / "stopping.md").write_text(body + "\n")
    if args.doc:
        doc = RESULTS.read_text()
        block = f"{BEGIN}\n{body}\n{END}"
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc = (
                doc.rstrip("\n")
                + "\n\n## When to stop: the stopping rules, validated by simulation\n\n"
                + block
                + "\n"
            )
        RESULTS.write_text(doc)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
