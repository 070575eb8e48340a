"""Two suite runs of the same strategies, compared repetition by repetition (the same seeds give the
same initial labels): did a change of the code move the learning curves?

For each table and strategy, the ratio of the mean learning-curve areas (new over old) over the
repetitions both runs have, with the standard error of the paired per-repetition log ratio, and each
run's relative area against its own random. A change that only changed the arithmetic should leave
the ratio within about two standard errors of 1 on most tables.

    python benchmarks/suite_compare.py benchmarks/results/suite-auto-lead6 \
        benchmarks/results/suite-auto-20
    python benchmarks/suite_compare.py OLD NEW --folder alloop-auto --strategies herding,random
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def areas(path: Path) -> pd.DataFrame:
    """(rep × strategy) the mean test metric over a curve's label counts (the curve's area)."""
    df = pd.read_csv(path)
    return df.groupby(["strategy", "rep"])["metric"].mean().unstack(0)


def compare(old: Path, new: Path, folder: str, strategies: list[str]) -> pd.DataFrame:
    rows = []
    for table in sorted(p.name for p in old.iterdir() if (p / folder / "curves.csv").exists()):
        if not (new / table / folder / "curves.csv").exists():
            continue
        a, b = (
            areas(old / table / folder / "curves.csv"),
            areas(new / table / folder / "curves.csv"),
        )
        reps = a.index.intersection(b.index)
        row = {"table": table, "reps": len(reps), "reps_new": len(b)}
        for s in strategies:
            if s not in a or s not in b or not len(reps):
                continue
            lr = np.log(b.loc[reps, s] / a.loc[reps, s])
            se = float(lr.std(ddof=1) / np.sqrt(len(lr))) if len(lr) > 1 else float("nan")
            row[f"{s} new/old"] = float(np.exp(lr.mean()))
            row[f"{s} se"] = se
        if "random" in a and "random" in b and len(strategies) > 1:
            other = next(s for s in strategies if s != "random")
            row[f"{other}/random old"] = float((a.loc[reps, other] / a.loc[reps, "random"]).mean())
            row[f"{other}/random new (paired reps)"] = float(
                (b.loc[reps, other] / b.loc[reps, "random"]).mean()
            )
            row[f"{other}/random new (all reps)"] = float((b[other] / b["random"]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--folder", default="alloop-auto", help="the method folder inside each table")
    ap.add_argument("--strategies", default="herding,random")
    args = ap.parse_args()
    out = compare(args.old, args.new, args.folder, args.strategies.split(","))
    if out.empty:
        raise SystemExit("no table has curves in both runs")
    cols = list(out.columns)
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for _, r in out.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
        print("| " + " | ".join(cells) + " |")
    for s in args.strategies.split(","):
        if f"{s} new/old" in out:
            z = (out[f"{s} new/old"] - 1.0).abs() / out[f"{s} se"]
            geo = float(np.exp(np.log(out[f"{s} new/old"]).mean()))
            print(
                f"\n{s}: geometric mean new/old {geo:.4f} over {len(out)} tables; "
                f"within 2 s.e. of 1 on {int((z <= 2).sum())} of {len(out)}"
            )


if __name__ == "__main__":
    main()
