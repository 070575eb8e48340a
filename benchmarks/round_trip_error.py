"""Does training until converged (issue 18) change what a run learns? Test error before and after.

For each bundled regression dataset (diabetes, concrete, powerplant), each model (linear with
``--s auto``, MLP 64,64) and each labeled-set size, a run is made with that many random pool rows as
labels (seeded) and the dataset's test set, trained once with ``alloop train --json`` in a fresh
process, and its test RMSE reported; with ``--tree NAME=PATH`` (repeatable) the same is done with
the
alloop at PATH (e.g. a worktree of the commit before), and the relative difference to the first tree
is printed.

Usage: python benchmarks/round_trip_error.py [--labels 30,100] --tree before=/path/to/old --tree
after=.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

DATASETS = ("diabetes", "concrete", "powerplant")
MODELS = {"linear": [], "mlp": ["--model", "mlp", "--hidden", "64,64"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="30,100")
    ap.add_argument("--tree", action="append", default=[])
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"installed": ""}
    root = Path(__file__).resolve().parents[1] / "datasets"
    tmp = Path(tempfile.mkdtemp(prefix="alloop-error-"))
    rows = []
    for ds in DATASETS:
        meta = json.loads((root / ds / "meta.json").read_text())
        pool = pd.read_parquet(root / ds / "pool.parquet")
        for n in (int(v) for v in args.labels.split(",")):
            pick = pool.sample(n=min(n, len(pool)), random_state=0)
            seed = tmp / f"{ds}-{n}.csv"
            pick[[meta["id"], meta["target"]]].to_csv(seed, index=False)
            for model, flags in MODELS.items():
                row = {"dataset": ds, "labels": n, "model": model}
                for tree, where in trees.items():
                    env = {
                        **os.environ,
                        "ALLOOP_RUNS": str(tmp / tree),
                        "ALLOOP_NO_CACHE": "1",
                        "JAX_PLATFORMS": "cpu",
                    }
                    if where:
                        env["PYTHONPATH"] = str(Path(where).resolve())
                    name = f"{ds}-{n}-{model}"
                    run = lambda *a, env=env: subprocess.run(
                        [sys.executable, "-m", "alloop", *a],
                        env=env,
                        capture_output=True,
                        text=True,  # noqa: E731
                        check=True,
                    )
                    run(
                        "init",
                        name,
                        "--pool",
                        str(root / ds / "pool.parquet"),
                        "--target",
                        meta["target"],
                        "--id-col",
                        meta["id"],
                        "--test",
                        str(root / ds / "test.parquet"),
                        "--labels",
                        str(seed),
                        *flags,
                    )
                    rec = json.loads(run("train", name, "--json").stdout)
                    row[tree] = rec["test_rmse"]
                    row[f"{tree} epochs"] = rec["epochs"]
                rows.append(row)
                print(row, file=sys.stderr)
    first = next(iter(trees))
    print(
        "| dataset | labels | model | "
        + " | ".join(f"{t} RMSE | {t} epochs" for t in trees)
        + " | change |"
    )
    print("|---|---|---|" + "---|---|" * len(trees) + "---|")
    for r in rows:
        last = list(trees)[-1]
        change = (r[last] - r[first]) / r[first]
        print(
            f"| {r['dataset']} | {r['labels']} | {r['model']} | "
            + " | ".join(f"{r[t]:.4g} | {r[f'{t} epochs']}" for t in trees)
            + f" | {change:+.2%} |"
        )
    print(
        f"largest change: {max(abs((r[list(trees)[-1]] - r[first]) / r[first]) for r in rows):.2%}"
        if rows
        else ""
    )


if __name__ == "__main__":
    main()
