"""Peak memory and throughput of `alloop query` as the pool grows: it must stream, not load.

For each pool size it generates a Parquet pool (float64 features, 64k-row row groups), creates a
run with a few seed labels, trains, and then measures in fresh processes:

- baseline: reading the id and feature columns with pyarrow in batches and converting to float32
  (what any streaming scorer has to pay), rows/s and peak RSS;
- ``alloop query`` (SLD, linear model, k=20) end to end: rows/s and peak RSS.

Peak RSS is each child process's VmHWM (see PEAK). benchmarks/bench_scale.py is the fuller study
(64 float32 features, 1M and 10M rows, both models, CPU time, the in-memory scoring bound).

Usage: python benchmarks/bench_query_memory.py [--rows 500000,2000000] [--features 16] [--model
linear]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from peak import PEAK  # benchmarks/peak.py: the script's folder is on sys.path

ROW_GROUP = 65536

BASELINE = (
    PEAK
    + r"""
import sys, time, numpy as np, pyarrow.parquet as pq
path, cols = sys.argv[1], sys.argv[2].split(",")
t = time.perf_counter(); n = 0
for rb in pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
    batch_size=65536, columns=["id", *cols]
):
    x = np.column_stack(
        [rb.column(c).to_numpy(zero_copy_only=False) for c in cols]
    ).astype(np.float32)
    n += len(x)
dt = time.perf_counter() - t
print(n / dt, peak_mb())
"""
)

QUERY = (
    PEAK
    + r"""
import sys, time
from alloop.commands.query import query as query_cmd
t = time.perf_counter()
query_cmd(sys.argv[1], k=20, strategy=sys.argv[2])
dt = time.perf_counter() - t
print(dt, peak_mb())
"""
)

IDLE = (
    PEAK
    + r"""
import alloop.commands.query  # everything a query loads (JAX, pyarrow), nothing run
print(0, peak_mb())
"""
)


def make_pool(path: Path, rows: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    writer = None
    for start in range(0, rows, ROW_GROUP):
        m = min(ROW_GROUP, rows - start)
        x = rng.normal(size=(m, d))
        cols = {"id": pa.array(np.arange(start, start + m, dtype=np.int64))}
        cols.update({f"f{j}": pa.array(x[:, j]) for j in range(d)})
        cols["target"] = pa.array(x @ w + 0.1 * rng.normal(size=m))
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()


def py(code: str, *args: str, env=None) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    return [float(v) for v in out.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="500000,2000000")
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--model", default="linear")
    ap.add_argument("--strategy", default="sld")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ALLOOP_RUNS": str(Path(tmp) / "runs")}
        for rows in [int(r) for r in args.rows.split(",")]:
            pool = Path(tmp) / f"pool-{rows}.parquet"
            make_pool(pool, rows, args.features)
            seed = Path(tmp) / "seed.csv"
            seed.write_text(
                "id,target\n" + "".join(f"{i},{float(i % 7)}\n" for i in range(0, 200, 10))
            )
            name = f"bench-{rows}"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "alloop",
                    "init",
                    name,
                    "--pool",
                    str(pool),
                    "--labels",
                    str(seed),
                    "--model",
                    args.model,
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [sys.executable, "-m", "alloop", "train", name],
                env=env,
                check=True,
                capture_output=True,
            )
            base_rate, base_rss = py(
                BASELINE, str(pool), ",".join(f"f{j}" for j in range(args.features))
            )
            _, idle_rss = py(IDLE, env=env)
            secs, rss = py(QUERY, name, args.strategy, env=env)
            results.append(
                {
                    "rows": rows,
                    "read_rows_per_s": base_rate,
                    "read_peak_rss_mb": base_rss,
                    "query_rows_per_s": rows / secs,
                    "query_peak_rss_mb": rss,
                    "import_rss_mb": idle_rss,
                    "query_seconds": secs,
                }
            )
            pool.unlink()
    print(
        "| pool rows | read+convert rows/s | read peak RSS MB | query rows/s | query peak "
        "RSS MB | (alloop+jax imported, idle) MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['read_rows_per_s']:,.0f} | {r['read_peak_rss_mb']:.0f} | "
            f"{r['query_rows_per_s']:,.0f} | {r['query_peak_rss_mb']:.0f} | "
            f"{r['import_rss_mb']:.0f} |"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
