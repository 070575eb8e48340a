"""Does a suite table's test set look like its pool? Chance shifts of small random splits, and what
they do.

    # per regression table: the pool/test KS tests
    python benchmarks/suite_shift.py
    # herding vs random on the test set and on it reweighted to the pool (linear model)
    python benchmarks/suite_shift.py --matched gag_urine --reps 10
    python benchmarks/suite_shift.py --matched gag_urine --reps 6 --model auto

The suite splits every table 80/20 at random (``benchmarks/suite/build.py``); on a table of a few
hundred rows the test set can still differ from the pool by chance. The first form prints, per
table, the two-sample Kolmogorov–Smirnov p-value of the most shifted feature (times the number of
features: Bonferroni) and of the target. The second rebuilds the test set with the pool's
distribution of its most shifted feature (each test row repeated in proportion to pool share / test
share of its quintile bin of that feature, four copies at share 1) and runs ``alloop simulate`` with
the suite's protocol on both test sets. A strategy that matches the pool (``herding``) is measured
on what it aims at only by the second; the suite's own figure stays the first. Needs scipy
(installed with scikit-learn, which builds the suite's data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import al_suite  # noqa: E402

BINS = 5  # quintile bins of the shifted feature
COPIES = 4  # copies of a test row whose bin has the pool's share


def shift_report(meta: dict, pool: pd.DataFrame, test: pd.DataFrame) -> dict:
    """The most shifted feature by KS, its p-value (raw and times the features), and the
    target's."""
    ps = {f: float(stats.ks_2samp(pool[f], test[f]).pvalue) for f in meta["features"]}
    worst = min(ps, key=ps.get)
    return {
        "feature": worst,
        "p": ps[worst],
        "p_bonferroni": min(1.0, ps[worst] * len(ps)),
        "p_target": float(stats.ks_2samp(pool["target"], test["target"]).pvalue),
        "n_test": len(test),
    }


def matched_test(pool: pd.DataFrame, test: pd.DataFrame, feature: str) -> pd.DataFrame:
    """The test rows repeated so that ``feature``'s quintile bins (over pool and test) have the
    pool's shares."""
    edges = np.quantile(np.r_[pool[feature], test[feature]], np.linspace(0, 1, BINS + 1))[1:-1]
    bp, bt = np.digitize(pool[feature], edges), np.digitize(test[feature], edges)
    sp, st = (
        np.bincount(bp, minlength=BINS) / len(pool),
        np.bincount(bt, minlength=BINS) / len(test),
    )
    copies = np.round(COPIES * (sp / np.maximum(st, 1e-12))[bt]).astype(int)
    out = test.loc[np.repeat(np.arange(len(test)), copies)].reset_index(drop=True)
    out["id"] = np.arange(len(out)) + int(max(pool["id"].max(), test["id"].max())) + 1
    return out


def relative_area(curves: Path) -> tuple[float, float, int]:
    """herding's learning-curve area over random's (paired reps), the per-rep ratios' standard
    error, wins (``al_suite.summarize``)."""
    df = pd.read_csv(curves).rename(columns={"strategy": "method"}).assign(model="alloop")
    row = al_suite.summarize(df, int(df["n_labels"].max())).set_index("method").loc["herding"]
    return float(row["rel_area"]), float(row["rel_se"]), int(row["wins"])


def run_matched(name: str, model: str, reps: int, out: Path) -> None:
    pool, test, meta = al_suite.suite.load(name)
    feature = shift_report(meta, pool, test)["feature"]
    out.mkdir(parents=True, exist_ok=True)
    matched = matched_test(pool, test, feature)
    matched.to_parquet(out / "test_matched.parquet", index=False)
    print(
        f"{name}: {feature} median pool {pool[feature].median():.3g}, test "
        f"{test[feature].median():.3g}, matched test ({len(matched)} rows) "
        f"{matched[feature].median():.3g}"
    )
    for label, path in (("suite test", None), ("matched test", out / "test_matched.parquet")):
        dest = out / f"{model}-{label.split()[0]}"
        al_suite.simulate_table(
            name, meta, ["herding", "random"], reps, dest, model, test=path, jobs=1
        )
        rel, se, wins = relative_area(dest / "curves.csv")
        print(f"  {label:12s} herding / random {rel:.3f} ± {se:.3f} ({wins} wins of {reps})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--matched",
        help=(
            "a regression table: herding vs random on its test set and on one "
            "reweighted to the pool"
        ),
    )
    ap.add_argument("--model", default="linear")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "out" / "shift"))
    a = ap.parse_args(argv)
    if a.matched:
        run_matched(a.matched, a.model, a.reps, Path(a.out) / a.matched)
        return 0
    print(
        "| table | test rows | most shifted feature | KS p | × features | target KS p "
        "|\n|---|---|---|---|---|---|"
    )
    for name in sorted(al_suite.suite.names("regression")):
        pool, test, meta = al_suite.suite.load(name)
        r = shift_report(meta, pool, test)
        print(
            f"| {name} | {r['n_test']} | {r['feature']} | {r['p']:.4f} | "
            f"{r['p_bonferroni']:.3f} | {r['p_target']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
