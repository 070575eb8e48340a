"""``--model auto``'s first choice on a few labels, with and without the pool check, on the suite's
regression tables.

For n random labels of each table (repetition r draws ``default_rng([7, r, n])``), every candidate
among linear, poly 2 and poly 3 gets its s and CV loss as ``alloop train`` computes them and its
spread on the run's stop set (``choose_s.pool_spread``), then is fitted in closed form on the n
labels and scored on the table's test rows. Three choices are compared by test RMSE, each over the
linear model's (paired by repetition, then averaged over repetitions and over tables):

- ``cv``: the lowest CV loss, what ``choose_model.choose`` did before the pool check;
- ``cv + pool check``: the lowest CV loss among the candidates ``choose_model.ineligible`` leaves;
- ``+ one SE``: of those, the simplest within one standard error of the lowest
  (``choose_model.simplest_within_se``), what it does now;
- ``hindsight``: the candidate with the lowest test RMSE (what no rule can know).

This is the first training of a run (no model in use yet, so no switching margin) and without the
MLP (a candidate from 40 labels), so at 50 and 80 labels it is the polynomials' part of the choice
only.

    # all 16 tables, n = 10, 20, 30, 50, 80, 8 repetitions (15–25 min)
    python benchmarks/bench_model_choice.py
    python benchmarks/bench_model_choice.py --datasets carseats,wage --labels 20,30 --reps 4
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent / "suite"))
import suite  # noqa: E402

from alloop.sim import ridge  # noqa: E402
from alloop.sim import simulate as sim  # noqa: E402
from alloop.training import choose_model, choose_s, stopping  # noqa: E402

RULES = ("cv", "cv + pool check", "+ one SE", "hindsight")


def table(name: str, labels: list[int], reps: int) -> dict:
    """{n: {rule: [test RMSE over the linear model's, per repetition]}}, plus how often the check
    ruled a candidate out."""
    folder = suite.folder(name)
    data = sim.load_data(str(folder / "pool.parquet"), str(folder / "test.parquet"), name=name)
    config = sim.config_for(
        data, sim.SimSettings(model={"kind": "auto"}, s="auto", task="regression")
    )
    x_pool = data.x_pool[stopping.stop_rows(config.seed, len(data.x_pool))].astype(np.float32)
    specs = [spec for spec in choose_model.candidates() if spec.kind != "mlp"]
    features = {
        spec.label(): ridge.make_features(
            spec.to_json(), config.standardizer["mean"], config.standardizer["std"]
        )
        for spec in specs
    }
    out: dict = defaultdict(lambda: defaultdict(list))
    for n in labels:
        if n > 0.75 * len(data.y_pool):
            continue
        for r in range(reps):
            rows = np.random.default_rng([7, r, n]).choice(len(data.y_pool), n, replace=False)
            x, y = data.x_pool[rows].astype(np.float32), data.y_pool[rows]
            scored, rmse = [], {}
            for spec in specs:
                s, choice = choose_s.resolve_s(
                    config.replace(model=spec), x, y[:, None], x_pool=x_pool
                )
                a = features[spec.label()](data.x_pool[rows])
                fit = ridge.fit_ridge(a, y, s, ridge.penalty(a.shape[1]))
                rmse[spec.label()] = float(
                    np.sqrt(
                        np.mean(
                            (features[spec.label()](data.x_test) @ fit.theta - data.y_test) ** 2
                        )
                    )
                )
                scored.append((spec, s, choice))
            cv = {spec.label(): choice.cv_loss for spec, _, choice in scored}
            dropped = choose_model.ineligible(
                scored, {spec.label(): choice.spread for spec, _, choice in scored}, n
            )
            one_se = choose_model.simplest_within_se(
                [t for t in scored if t[0].label() not in dropped]
            )[0][0].label()
            picks = {
                "cv": min(cv, key=cv.get),
                "cv + pool check": min((k for k in cv if k not in dropped), key=cv.get),
                "+ one SE": one_se,
                "hindsight": min(rmse, key=rmse.get),
            }
            for rule, label in picks.items():
                out[n][rule].append(rmse[label] / rmse["linear"])
            out[n]["ruled out"].append(len(dropped) > 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(suite.names("regression")))
    ap.add_argument("--labels", default="10,20,30,50,80")
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    labels = [int(v) for v in args.labels.split(",")]
    per_n: dict = defaultdict(lambda: defaultdict(list))
    for name in args.datasets.split(","):
        for n, rules in table(name, labels, args.reps).items():
            means = {rule: float(np.mean(rules[rule])) for rule in RULES}
            print(
                f"{name:18s} {n:4d} labels  "
                + "  ".join(f"{rule} {v:.3f}" for rule, v in means.items())
                + f"  ruled out in {sum(rules['ruled out'])} of {len(rules['ruled out'])}",
                flush=True,
            )
            for rule, v in means.items():
                per_n[n][rule].append(v)
            per_n[n]["ruled out"].append(float(np.mean(rules["ruled out"])))
    print(
        "\n| labels | tables | "
        + " | ".join(f"{rule}: mean (worst table, tables above 1.05)" for rule in RULES)
        + " | choices with a candidate ruled out |"
    )
    print("|---|---|" + "---|" * (len(RULES) + 1))
    for n, rules in sorted(per_n.items()):
        cells = [
            (
                f"{np.mean(rules[rule]):.3f} ({np.max(rules[rule]):.2f}, "
                f"{sum(v > 1.05 for v in rules[rule])})"
            )
            for rule in RULES
        ]
        print(
            f"| {n} | {len(rules['cv'])} | "
            + " | ".join(cells)
            + f" | {np.mean(rules['ruled out']):.0%} |"
        )


if __name__ == "__main__":
    main()
