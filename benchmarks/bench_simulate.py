"""What a simulated curve costs, against a baseline commit run beside it in the same run.

Each (code, model) runs ``sim.simulate`` with ``--jobs 1`` in a fresh process over the suite's
protocol (10 initial labels, batches of 10, budget 200) for the strategies and repetitions given,
with its own JAX compilation cache (empty, or filled by an untimed first run with ``--cache warm``),
and reports the process's CPU seconds (user + system) per curve; the first run of each pair is the
baseline, checked out from git into ``benchmarks/out/baseline-REF``.
Both codes run the same curves, so the mean test RMSE areas are printed side by side too: the
speed-ups change the arithmetic (closed forms in numpy, warm-started grid trainings), and this is
where their results are compared.

    python benchmarks/bench_simulate.py            # computers, auto and linear
    python benchmarks/bench_simulate.py --table wage --reps 2 --models auto
    python benchmarks/bench_simulate.py --baseline HEAD~3 --strategies herding
    python benchmarks/bench_simulate.py --models auto --cache warm   # as a second simulate finds it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BASELINE = (
    "97f5429"  # the code before the simulation issue: every search compiled per label count
)

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {suite!r})
import suite
from alloop.core import compile_cache
from alloop.sim import simulate as sim
compile_cache.enable()  # as the CLI does (the baseline's simulate did not)
t0 = time.perf_counter()
meta = suite.build({table!r})
folder = suite.folder({table!r})
budget = int(min(200, (meta["n_pool"] * 3 // 4) // 10 * 10))
out = sim.run_simulation(pool=str(folder / "pool.parquet"), test=str(folder / "test.parquet"),
                         strategy_list={strategies!r}, reps={reps}, out={out!r}, budget=budget,
                         batch=10, initial=10, seed=0, model={{"kind": {model!r}}}, jobs=1)
ru = resource.getrusage(resource.RUSAGE_SELF)
areas = {{s: out["strategies"][s]["area"] for s in {strategies!r}}}
print(json.dumps({{"cpu": ru.ru_utime + ru.ru_stime, "wall": time.perf_counter() - t0,
                  "curves": {reps} * len({strategies!r}), "areas": areas}}))
"""


def baseline_tree(ref: str) -> Path:
    """A checkout of ``ref`` (a git worktree under benchmarks/out), made once."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    path = HERE / "out" / f"baseline-{sha}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True)
    return path


def run(
    tree: Path, table: str, model: str, strategies: list[str], reps: int, warm: bool = False
) -> dict:
    """One simulation in a fresh process on the code at ``tree``, with its own compilation cache:
    empty, or (``warm``) filled by the same simulation run once before, untimed."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree), "ALLOOP_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("ALLOOP_NO_CACHE", None)
        for attempt in range(2 if warm else 1):
            code = CHILD.format(
                suite=str(HERE / "suite"),
                table=table,
                strategies=strategies,
                reps=reps,
                out=str(Path(tmp) / f"sim{attempt}"),
                model=model,
            )
            proc = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp
            )
            if proc.returncode != 0:
                sys.exit(f"simulation failed on {tree}:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--table", default="computers", help="a suite table (benchmarks/suite)")
    ap.add_argument("--models", default="auto,linear")
    ap.add_argument("--strategies", default="herding,random")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument(
        "--baseline", default=DEFAULT_BASELINE, help="git ref of the code to compare with"
    )
    ap.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="time with an empty compilation cache, or one the same simulation filled before",
    )
    args = ap.parse_args()
    strategies = args.strategies.split(",")
    base = baseline_tree(args.baseline)
    print(
        f"table {args.table}, strategies {','.join(strategies)}, {args.reps} repetition(s), "
        f"jobs 1, {args.cache} compilation cache"
    )
    print("| model | code | CPU s / curve | wall s / curve | baseline / this | mean area |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        warm = args.cache == "warm"
        old = run(base, args.table, model, strategies, args.reps, warm)
        new = run(ROOT, args.table, model, strategies, args.reps, warm)
        for label, r in ((f"baseline {args.baseline}", old), ("this", new)):
            per = r["cpu"] / r["curves"]
            ratio = old["cpu"] / r["cpu"]
            areas = ", ".join(f"{s} {v:.4g}" for s, v in r["areas"].items())
            wall = r["wall"] / r["curves"]
            print(
                f"| {model} | {label} | {per:.1f} | {wall:.1f} | {ratio:.2f} | {areas} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
