"""Does ``--s auto`` help? Test RMSE after a few active-learning rounds, fixed s = 1 against s
chosen per round.

Each run is the real cycle through ``alloop.commands`` (``demo.run_demo``: init → train → (query →
simulated labeler → ingest → retrain) × rounds, SLD queries, SGDF training), on the bundled
regression datasets and on a generated one (30 features, 5 of them informative, noisy labels: few
labels, many weights).

    # every dataset, 3 repetitions
    python benchmarks/bench_choose_s.py
    python benchmarks/bench_choose_s.py --datasets diabetes --reps 2 --rounds 4
    # same labeled rows in both arms: the fit alone
    python benchmarks/bench_choose_s.py --strategy random
    python benchmarks/bench_choose_s.py --model mlp --hidden 32 --datasets concrete,powerplant

Prints one table per dataset (mean test RMSE by round, and the s auto chose) and a summary line;
``--json FILE`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

GENERATED = "generated30"
REGRESSION = ("paper1d", "diabetes", "concrete", "powerplant")


def make_generated(
    folder: Path, seed: int = 7, n_pool: int = 600, n_test: int = 300, d: int = 30
) -> None:
    """y = x·β + noise, β: 5 strong and 25 weak coefficients, correlated features, σ = 1.5."""
    rng = np.random.default_rng(seed)
    cov = 0.3 + 0.7 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    beta = np.r_[rng.normal(0, 2.0, 5), rng.normal(0, 0.15, d - 5)]
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"x{j:02d}" for j in range(d)]
    for fname, n, first in (("pool.parquet", n_pool, 0), ("test.parquet", n_test, n_pool)):
        x = rng.normal(size=(n, d)) @ chol.T
        y = x @ beta + 1.5 * rng.normal(size=n)
        pd.DataFrame(
            {
                "id": np.arange(first, first + n),
                **{c: x[:, j] for j, c in enumerate(names)},
                "target": y,
            }
        ).to_parquet(folder / fname, index=False)
    meta = {
        "name": GENERATED,
        "task": "regression",
        "target": "target",
        "id": "id",
        "features": names,
        "n_pool": n_pool,
        "n_test": n_test,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def datasets_root(tmp: Path, names) -> Path:
    """A datasets folder for ALLOOP_DATASETS: the bundled ones linked, the generated one built."""
    from alloop.io import datasets

    root = tmp / "datasets"
    root.mkdir()
    bundled = datasets.datasets_dir()
    for name in names:
        if name == GENERATED:
            make_generated(root / name)
        elif (bundled / name / "meta.json").exists():
            os.symlink(bundled / name, root / name)
    return root


def one_run(
    dataset: str,
    s,
    seed: int,
    rounds: int,
    k: int,
    initial: int,
    strategy: str = "sld",
    model: dict | None = None,
) -> dict:
    from alloop.commands import demo

    t0 = time.perf_counter()
    res = demo.run_demo(
        dataset,
        rounds=rounds,
        k=k,
        initial=initial,
        strategy=strategy,
        s=s,
        seed=seed,
        model=model,
        name=f"{dataset}-{s}-{seed}-{strategy}",
    )
    from alloop.io import rundir

    history = rundir.read_history(rundir.open_run(res["run"]))
    chosen = [r["s"] for r in history if r.get("command") == "train"]
    return {
        "dataset": dataset,
        "s": str(s),
        "seed": seed,
        "rmse": [r["test_rmse"] for r in res["rounds"]],
        "labels": [r["labels"] for r in res["rounds"]],
        "s_used": chosen,
        "seconds": time.perf_counter() - t0,
    }


def summarize(rows: list[dict]) -> str:
    out = []
    wins = total = 0
    ratios = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        fixed = [r for r in rows if r["dataset"] == ds and r["s"] != "auto"]
        auto = [r for r in rows if r["dataset"] == ds and r["s"] == "auto"]
        if not fixed or not auto:
            continue
        f = np.array([r["rmse"] for r in fixed])
        a = np.array([r["rmse"] for r in auto])
        s_auto = np.array([r["s_used"] for r in auto])
        out.append(
            f"\n{ds}: test RMSE by round, mean over {len(fixed)} seeds (s chosen by auto: "
            "median over seeds)"
        )
        out.append(
            f"{'round':>5} {'labels':>6} {'s=1':>10} {'auto':>10} {'auto/s=1':>9} {'s auto':>9}"
        )
        for i, n in enumerate(fixed[0]["labels"]):
            out.append(
                f"{i:>5} {n:>6} {f[:, i].mean():>10.4g} {a[:, i].mean():>10.4g} "
                f"{a[:, i].mean() / f[:, i].mean():>9.3f} {np.median(s_auto[:, i]):>9.3g}"
            )
        per_seed = a / f
        wins += int(np.sum(per_seed[:, 1:] < 1.0))
        total += per_seed[:, 1:].size
        ratios.append(float(np.exp(np.mean(np.log(per_seed[:, 1:])))))
        out.append(
            f"geometric mean of RMSE ratio auto/s=1 over rounds 1..{f.shape[1] - 1} and "
            f"seeds: {ratios[-1]:.3f}"
        )
    if total:
        out.append(
            f"\nall datasets: auto has the lower RMSE in {wins}/{total} (seed, round) pairs; "
            f"per-dataset ratios {', '.join(f'{r:.3f}' for r in ratios)}"
        )
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join((GENERATED, *REGRESSION)))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--initial", type=int, default=10)
    ap.add_argument(
        "--strategy",
        default="sld",
        help="sld, or random: then both arms label the same rows and only the fit differs",
    )
    ap.add_argument(
        "--model",
        default=None,
        help="linear, or mlp (tanh) with --hidden; default: each dataset's demo model",
    )
    ap.add_argument(
        "--hidden", default="32", help="hidden layer sizes of --model mlp, comma-separated"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    model = (
        None
        if args.model is None
        else {
            "kind": args.model,
            **(
                {"hidden": [int(h) for h in args.hidden.split(",")], "activation": "tanh"}
                if args.model == "mlp"
                else {}
            ),
        }
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["ALLOOP_DATASETS"] = str(datasets_root(tmp, names))
        os.environ["ALLOOP_RUNS"] = str(tmp / "runs")
        for ds in names:
            for seed in range(args.reps):
                for s in (1.0, "auto"):
                    row = one_run(
                        ds, s, seed, args.rounds, args.k, args.initial, args.strategy, model
                    )
                    rows.append(row)
                    rmse, used = (
                        " ".join(f"{v:.4g}" for v in row["rmse"]),
                        " ".join(f"{v:.3g}" for v in row["s_used"]),
                    )
                    print(
                        f"{ds} s={s} seed={seed}: rmse {rmse}  s {used}  ({row['seconds']:.0f}s)",
                        file=sys.stderr,
                        flush=True,
                    )
                    if args.json:
                        Path(args.json).write_text(json.dumps(rows, indent=1))
        shutil.rmtree(tmp / "runs", ignore_errors=True)
    print(summarize(rows))


if __name__ == "__main__":
    main()
