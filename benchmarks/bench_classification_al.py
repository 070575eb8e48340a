"""Does SLD save labels on classification? The live label-query cycle, strategy against strategy.

For every bundled classification dataset, strategy and repetition this runs ``alloop demo``'s loop
(``demo.run_demo``: init with random seed labels, then query -> simulated labeler -> ingest, which
retrains) in a temporary runs folder, and records the test accuracy after every round. Within a
repetition every strategy starts from the same seed labels and training seed, so the comparison is
paired. It measures exactly what a user runs: the live query path, the run's own trainer and s.

Summary per dataset and strategy: mean test accuracy at round 0, halfway and at the end, and the
area under the test *error* curve (1 - accuracy over the rounds) relative to random's, as the mean
over repetitions of the per-repetition ratio with its standard error: below 1 saves labels.

Usage: python benchmarks/bench_classification_al.py [--datasets breast_cancer,wine,digits]
       [--strategies sld,sld-topk,random,entropy,margin] [--reps 6] [--first-rep 0] [--rounds 10]
       [--k 10] [--s auto|NUMBER] [--jobs 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time

import numpy as np

DATASETS = ("breast_cancer", "wine", "digits")
STRATEGIES = ("sld", "sld-topk", "random", "entropy", "margin")


def one_curve(job: tuple) -> dict:
    """(dataset, strategy, rep, rounds, k, initial, runs) -> the per-round test accuracy of one
    loop."""
    dataset, strategy, rep, rounds, k, initial, runs, s = job
    os.environ["ALLOOP_RUNS"] = runs
    from alloop.commands import demo  # noqa: PLC0415 - after ALLOOP_RUNS is set

    t = time.perf_counter()
    out = demo.run_demo(
        dataset,
        rounds=rounds,
        k=k,
        initial=initial,
        strategy=strategy,
        seed=rep,
        s=s,
        name=f"{dataset}-{strategy}-{rep}",
    )
    acc = [r["test_accuracy"] for r in out["rounds"]]
    return {
        "dataset": dataset,
        "strategy": strategy,
        "rep": rep,
        "accuracy": acc,
        "seconds": time.perf_counter() - t,
    }


def area(acc: list[float]) -> float:
    """Trapezoid area under the error curve 1 - accuracy, rounds equally spaced."""
    err = 1.0 - np.asarray(acc, np.float64)
    return float(np.sum((err[1:] + err[:-1]) / 2))


def summarize(curves: list[dict], strategies: list[str]) -> list[dict]:
    out = []
    for dataset in sorted({c["dataset"] for c in curves}):
        by = {(c["strategy"], c["rep"]): c["accuracy"] for c in curves if c["dataset"] == dataset}
        reps = sorted({r for (_, r) in by})
        for s in strategies:
            acc = np.array([by[(s, r)] for r in reps])
            ratios = (
                np.array([area(by[(s, r)]) / max(area(by[("random", r)]), 1e-12) for r in reps])
                if "random" in strategies
                else None
            )
            mid = acc.shape[1] // 2
            out.append(
                {
                    "dataset": dataset,
                    "strategy": s,
                    "reps": len(reps),
                    "acc_start": acc[:, 0].mean(),
                    "acc_mid": acc[:, mid].mean(),
                    "acc_end": acc[:, -1].mean(),
                    "round_mid": mid,
                    "rounds": acc.shape[1] - 1,
                    "area_vs_random": None if ratios is None else float(ratios.mean()),
                    "area_vs_random_se": None
                    if ratios is None
                    else float(ratios.std(ddof=1) / np.sqrt(len(ratios)))
                    if len(ratios) > 1
                    else 0.0,
                }
            )
    return out


def table(rows: list[dict], k: int, initial: int) -> str:
    lines = [
        f"| dataset | strategy | accuracy at {initial} labels | halfway | at the end | error "
        "area / random (± se) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            ""
            if r["area_vs_random"] is None
            else f"{r['area_vs_random']:.3f} ± {r['area_vs_random_se']:.3f}"
        )
        lines.append(
            f"| {r['dataset']} | {r['strategy']} | {r['acc_start']:.3f} | {r['acc_mid']:.3f} "
            f"({initial + k * r['round_mid']}) | {r['acc_end']:.3f} "
            f"({initial + k * r['rounds']}) | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument(
        "--first-rep",
        type=int,
        default=0,
        help="seed of the first repetition (to add repetitions to an earlier run)",
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--initial", type=int, default=10)
    ap.add_argument(
        "--s", default=None, help="the runs' s: a number or auto (default: the dataset's demo s, 1)"
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="also write the curves and the summary here")
    args = ap.parse_args()
    datasets, strategies = args.datasets.split(","), args.strategies.split(",")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as runs:
        s_arg = None if args.s is None else (args.s if args.s == "auto" else float(args.s))
        jobs = [
            (d, s, r, args.rounds, args.k, args.initial, runs, s_arg)
            for d in datasets
            for r in range(args.first_rep, args.first_rep + args.reps)
            for s in strategies
        ]
        ctx = __import__("multiprocessing").get_context("spawn")  # JAX does not survive fork
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            curves = []
            for c in pool.map(one_curve, jobs):
                curves.append(c)
                print(
                    f"{c['dataset']} {c['strategy']} rep {c['rep']}: accuracy "
                    f"{c['accuracy'][0]:.3f} -> {c['accuracy'][-1]:.3f} ({c['seconds']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    rows = summarize(curves, strategies)
    print(table(rows, args.k, args.initial))
    print(
        f"\n{args.reps} repetitions, {args.rounds} rounds of {args.k} after {args.initial} "
        f"random seed labels; {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"curves": curves, "summary": rows}, f, indent=1)


if __name__ == "__main__":
    main()
