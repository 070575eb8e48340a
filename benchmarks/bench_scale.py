"""`alloop query` at scale: throughput against what reading and scoring alone allow, and peak
memory.

For each pool size (default 1M and 10M rows x 64 float32 features, zstd, pyarrow's default row
groups, generated in a temporary directory) and each model (linear; MLP 64->256->256->1, tanh),
every measurement runs in a fresh process (peak RSS: VmHWM, see PEAK):

- read: pyarrow reads the id and feature columns in 65,536-row batches and converts them to a
  float32 (m, d) matrix: what any streaming scorer pays, with the reader settings alloop uses;
- score: the run's own SLD scorer on rows already in memory (a 256k-row buffer, cycled), in alloop's
  chunk size, after compilation, as many rows as the pool (at most --score-rows);
- query: ``alloop query NAME -k 20 --strategy S`` end to end (``commands.query`` timed after
  imports, on a fresh copy of the trained run): reading, scoring, merging, fixed costs (opening,
  checkpoint, compilation, commit). S is the strategy that scores every pool row with the model
  (``sld-topk`` where it exists), ``sld`` (which streams a hash and scores only its candidates) and
  the regression default ``herding`` (the same stream, then kernel herding among the candidates),
  and the model's own default where it differs (``lcmd`` for the MLP: LCMD over the candidates'
  gradient features).

The table gives rows/s (best of --reps, the measurements interleaved), peak RSS, and query / bound
with bound = min(read, score) for whole-pool scoring (read for the default sld): the figure the
target asks to be >= 0.9. Then the per-point influence alternative (a CG solve H v = ∇L(z) for every
pool point, with alloop.core.tangents' Hessian-vector product) against SLD on the same points, as a
time ratio.

Usage: python benchmarks/bench_scale.py [--rows 1000000,10000000] [--reps 2] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from peak import PEAK  # benchmarks/peak.py: the script's folder is on sys.path

D = 64
WRITE_ROWS = 1 << 20  # rows per write (and per row group: pyarrow's default size)
MODELS = ("linear", "mlp")  # the MLP is 64 -> 256 -> 256 -> 1, tanh

READ = (
    PEAK
    + r"""
import json, sys, time, numpy as np, pyarrow.parquet as pq
path, d = sys.argv[1], int(sys.argv[2])
cols = [f"f{j}" for j in range(d)]
t, c0 = time.perf_counter(), time.process_time(); n = 0
for rb in pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
    batch_size=65536, columns=["id", *cols], use_threads=False
):
    ids = rb.column("id").to_numpy()
    x = np.empty((rb.num_rows, d), np.float32)
    for j, c in enumerate(cols):
        x[:, j] = rb.column(c).to_numpy(zero_copy_only=False)
    n += len(x)
dt = time.perf_counter() - t
print(json.dumps({"rows": n, "seconds": dt, "cpu": time.process_time() - c0, "rss_mb": peak_mb()}))
"""
)

SCORE = (
    PEAK
    + r"""
import json, sys, time, numpy as np
from alloop.commands import common
from alloop.strategies import stream as streaming
from alloop.training import fit as fitting
from alloop.core import scorers
from alloop.io import rundir
run = rundir.open_run(sys.argv[1]); n = int(sys.argv[2])
tree, meta = common.load_checkpoint(run)
fn = scorers.sld(
    fitting.build_problem(run.config, tree["params"]), tree["params"], tree["tangent"],
    np.asarray(meta["noise"], np.float32),
)
chunk = streaming.SCORE_ROWS
n = max(chunk, n // chunk * chunk)
buf = min(n, 1 << 18)  # rows held in memory (64 MB at 64 features), cycled until n rows are scored
x = np.random.default_rng(0).standard_normal(
    (buf, len(run.config["pool"]["features"])), dtype=np.float32
)
np.asarray(fn(x[:chunk]))  # compile (not timed)
t, c0 = time.perf_counter(), time.process_time()
for i in range(0, n, chunk):
    j = i % buf
    np.asarray(fn(x[j : j + chunk]))
dt = time.perf_counter() - t
print(json.dumps({"rows": n, "seconds": dt, "cpu": time.process_time() - c0, "rss_mb": peak_mb()}))
"""
)

QUERY = (
    PEAK
    + r"""
import json, sys, time
from alloop.commands.query import query as query_cmd
t, c0 = time.perf_counter(), time.process_time()
rec = query_cmd(sys.argv[1], k=20, strategy=sys.argv[2])
dt = time.perf_counter() - t
print(json.dumps({
    "seconds": dt, "cpu": time.process_time() - c0, "rss_mb": peak_mb(),
    "strategy": rec["strategy"],
}))
"""
)

GENERATE = r"""
import sys
sys.path.insert(0, sys.argv[3])
from bench_scale import make_pool
make_pool(sys.argv[1], int(sys.argv[2]))
"""

PREPARE = r"""
import sys
from alloop.commands.init import init_run
from alloop.commands.train import train as train_cmd
name, pool, seed_csv, kind = sys.argv[1:5]
model = {"kind": kind, **({"hidden": [256, 256], "activation": "tanh"} if kind == "mlp" else {})}
init_run(name, pool, labels=seed_csv, model=model, train={"epochs": 1, "min_steps": 200})
train_cmd(name)
"""

INFLUENCE = r"""
import json, sys, time, numpy as np, jax, jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from alloop.commands import common
from alloop.training import choose_s as tuning, fit as fitting
from alloop.core import objective, scorers, tangents
from alloop.io import pool as poolio, rundir
run = rundir.open_run(sys.argv[1]); n_points = int(sys.argv[2])
info = common.open_pool_of(run)
tree, meta = common.load_checkpoint(run)
params = jax.tree_util.tree_map(jnp.asarray, tree["params"])
problem = fitting.build_problem(run.config, tree["params"])
s = tuning.trained_s(run.config, meta)
_, lx, ly = common.labeled_arrays(run, info)
data = objective.make_data(lx, fitting.make_targets(run.config, ly, meta.get("target")))
batch = next(poolio.iter_batches(info, batch_rows=1000, with_targets=True))
x, y = batch.X[:1000], fitting.make_targets(run.config, batch.Y[:1000, :1], meta.get("target"))
flat, unravel = ravel_pytree(params)
p = flat.size

# SLD: one forward-mode pass for all the points
sld = scorers.sld(problem, tree["params"], tree["tangent"], np.asarray(meta["noise"], np.float32))
np.asarray(sld(x))
t = time.perf_counter(); reps = 20
for _ in range(reps):
    np.asarray(sld(x))
sld_s = (time.perf_counter() - t) / reps

# influence: CG on H v = ∇L(z) for every point, with alloop.core.tangents' Hessian-vector product
# and CG loop, compiled once for all the points (the fastest honest form of it)
def grad_z(xz, yz):
    f = lambda q: jnp.sum(
        problem.loss.per_example(problem.model.apply(unravel(q), problem.stats, xz[None]), yz[None])
    )
    return jax.grad(f)(flat)

@jax.jit
def solve(flat_p, s_, d, xz, yz):
    b = grad_z(xz, yz)
    mv = lambda v: ravel_pytree(tangents.hvp(problem, unravel(flat_p), s_, d, unravel(v)))[0]
    return tangents.cg_loop(mv, b, jnp.zeros_like(b), 1e-6, p)
s_arr = jnp.float32(s)
solve(flat, s_arr, data, x[0], y[0])[0].block_until_ready()
t = time.perf_counter(); its = []
for i in range(n_points):
    v, it = solve(flat, s_arr, data, x[i], y[i]); v.block_until_ready(); its.append(int(it))
cg_s = (time.perf_counter() - t) / n_points * 1000
print(json.dumps({"params": int(p), "points_timed": n_points, "sld_s_per_1000": sld_s,
                  "cg_s_per_1000": cg_s, "cg_iterations_mean": float(np.mean(its))}))
"""


def make_pool(path: Path, rows: int, d: int = D, seed: int = 0) -> None:
    """``rows`` x ``d`` standard-normal float32 features, a float32 target, int64 ids; zstd, no
    dictionary."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d).astype(np.float32)
    writer = None
    for start in range(0, rows, WRITE_ROWS):
        m = min(WRITE_ROWS, rows - start)
        x = rng.standard_normal((m, d), dtype=np.float32)
        cols = {"id": pa.array(np.arange(start, start + m, dtype=np.int64))}
        cols.update({f"f{j}": pa.array(x[:, j]) for j in range(d)})
        cols["target"] = pa.array(
            np.tanh(x @ w / np.sqrt(d)) + 0.1 * rng.standard_normal(m, dtype=np.float32)
        )
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd", use_dictionary=False)
        writer.write_table(table, row_group_size=WRITE_ROWS)
    writer.close()


def py(code: str, *args, env=None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_run(name: str, pool: Path, model: str, seed_csv: Path, env) -> None:
    """`alloop init NAME --pool POOL --labels SEED --model MODEL --epochs 1 --min-steps 200` then
    `alloop train NAME`."""
    out = subprocess.run(
        [sys.executable, "-c", PREPARE, name, str(pool), str(seed_csv), model],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])


def whole_pool_strategy() -> str:
    """The strategy that scores every pool row with the model (SLD top-k): the path the throughput
    target is about."""
    from alloop import strategies

    return "sld-topk" if "sld-topk" in strategies.REGISTRY else "sld"


def measure(
    rows: int, model: str, pool: Path, runs: Path, reps: int, score_rows: int, env
) -> list[dict]:
    """Best-of-``reps`` rates, the measurements interleaved so that all see the same machine
    load."""
    name, whole = f"{model}-{rows}", whole_pool_strategy()
    from alloop.strategies import default_for

    own = default_for("regression", model)  # the model's default (herding; lcmd for the MLP)
    strategies = [whole] + [s for s in dict.fromkeys(("sld", "herding", own)) if s != whole]
    best, rss, cpu = {}, {}, {}

    def keep(key, n, out):
        if n / out["seconds"] > best.get(key, 0.0):
            best[key], cpu[key] = n / out["seconds"], out["cpu"] / n * 1e6
        rss[key] = max(rss.get(key, 0.0), out["rss_mb"])

    for _ in range(reps):
        r = py(READ, pool, D)
        keep("read", r["rows"], r)
        sc = py(SCORE, name, min(rows, score_rows or rows), env=env)
        keep("score", sc["rows"], sc)
        for strategy in strategies:
            shutil.rmtree(runs / f"{name}-q", ignore_errors=True)
            shutil.copytree(runs / name, runs / f"{name}-q")
            keep(strategy, rows, py(QUERY, f"{name}-q", strategy, env=env))
    out = []
    for strategy in strategies:
        # the whole-pool strategy is bound by reading or by scoring; sld, herding and lcmd stream a
        # hash and score or pick among only their candidate buffer, so reading bounds them
        bound = min(best["read"], best["score"]) if strategy == whole else best["read"]
        out.append(
            {
                "rows": rows,
                "model": model,
                "strategy": strategy,
                "read_rows_per_s": best["read"],
                "score_rows_per_s": best["score"],
                "query_rows_per_s": best[strategy],
                "ratio": best[strategy] / bound,
                "bound": "read" if bound == best["read"] else "score",
                "read_rss_mb": rss["read"],
                "score_rss_mb": rss["score"],
                "query_rss_mb": rss[strategy],
                "read_cpu_s_per_1m": cpu["read"],
                "score_cpu_s_per_1m": cpu["score"],
                "query_cpu_s_per_1m": cpu[strategy],
            }
        )
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| pool rows | model | strategy | read+convert rows/s | in-memory score rows/s | alloop "
        "query rows/s | query / bound | bound | peak RSS read / score / query (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['model']} | {r['strategy']} | {r['read_rows_per_s']:,.0f} | "
            f"{r['score_rows_per_s']:,.0f} | {r['query_rows_per_s']:,.0f} | {r['ratio']:.2f} | "
            f"{r['bound']} | {r['read_rss_mb']:.0f} / {r['score_rss_mb']:.0f} / "
            f"{r['query_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def cpu_table(results: list[dict]) -> str:
    """Process CPU seconds (all threads) per million rows: steadier than wall time on a shared
    machine."""
    lines = [
        "| pool rows | model | strategy | read CPU s / 1M rows | score CPU s / 1M rows | "
        "query CPU s / 1M rows | query / (read + score) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['model']} | {r['strategy']} | "
            f"{r['read_cpu_s_per_1m']:.2f} | "
            f"{r['score_cpu_s_per_1m']:.2f} | "
            f"{r['query_cpu_s_per_1m']:.2f} | "
            f"{r['query_cpu_s_per_1m'] / (r['read_cpu_s_per_1m'] + r['score_cpu_s_per_1m']):.2f} "
            "|"
        )
    return "\n".join(lines)


def influence_table(results: dict) -> str:
    lines = [
        "| model | parameters | SLD, 1,000 points (s) | per-point CG, 1,000 points (s) | CG "
        "/ SLD | mean CG iterations |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        lines.append(
            f"| {model} | {r['params']:,} | {r['sld_s_per_1000']:.4f} | {r['cg_s_per_1000']:.2f} "
            f"(from {r['points_timed']}) | {r['cg_s_per_1000'] / r['sld_s_per_1000']:,.0f}x | "
            f"{r['cg_iterations_mean']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000,10000000", help="pool sizes, comma-separated")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument(
        "--reps", type=int, default=2, help="repetitions per measurement (best is kept)"
    )
    ap.add_argument(
        "--score-rows",
        type=int,
        default=None,
        help="most rows the scoring baseline scores (default: as many as the pool)",
    )
    ap.add_argument(
        "--influence-points",
        type=int,
        default=1000,
        help="points timed for per-point CG (linear; MLP: 1/50)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="100k rows, one repetition, few influence points (< 1 min)",
    )
    ap.add_argument(
        "--tmp",
        default=None,
        help="directory for the generated pools (default: the system temp dir)",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.reps, args.influence_points = "100000", 1, 100
    sizes = [int(r) for r in args.rows.split(",")]
    need = max(sizes) * (D + 3) * 4 * 1.05
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        free = shutil.disk_usage(tmp).free
        if need > 0.8 * free:
            sys.exit(
                f"the {max(sizes):,}-row pool needs about {need / 2**30:.1f} GiB and {tmp} "
                f"has {free / 2**30:.1f} GiB free: pass smaller --rows or --tmp"
            )
        runs = Path(tmp) / "runs"
        env = {
            **os.environ,
            "ALLOOP_RUNS": str(runs),
            "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        }
        seed_csv = Path(tmp) / "seed.csv"
        seed_csv.write_text(
            "id,target\n" + "".join(f"{i},{np.sin(i):.6f}\n" for i in range(0, 4000, 200))
        )
        results, influence = [], {}
        for rows in sizes:
            pool = Path(tmp) / f"pool-{rows}.parquet"
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", GENERATE, str(pool), str(rows), str(Path(__file__).parent)],
                check=True,
            )  # keeps this process small
            print(
                f"generated {rows:,} rows ({pool.stat().st_size / 2**20:,.0f} MiB) in "
                f"{time.perf_counter() - t:.0f} s",
                file=sys.stderr,
            )
            for model in args.models.split(","):
                prepare_run(f"{model}-{rows}", pool, model, seed_csv, env)
                new = measure(rows, model, pool, runs, args.reps, args.score_rows, env)
                results += new
                print("\n".join(table(new).splitlines()[2:]), file=sys.stderr)
                if rows == sizes[0]:
                    points = (
                        args.influence_points
                        if model == "linear"
                        else max(args.influence_points // 50, 2)
                    )
                    influence[model] = py(INFLUENCE, f"{model}-{rows}", points, env=env)
            pool.unlink()
    print(table(results))
    print()
    print(cpu_table(results))
    print()
    print(influence_table(influence))
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": results, "influence": influence}, indent=2))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
