"""Why a plain pyarrow reading loop peaks at 2.4+ GB on a 5M x 100 pool, and what alloop's reader
peaks at.

Generates a float32 zstd Parquet file (default 5M rows x 100 features, 1M-row row groups: the
issue's prototype) in a temporary directory and reads it whole in 65,536-row batches, each way in a
fresh process (peak RSS: VmHWM):

- prototype: ``ParquetFile(path).iter_batches`` with pyarrow's defaults, then ``np.column_stack`` of
  the columns and ``astype(float32)``;
- no pre-buffer: the same with ``pre_buffer=False``;
- alloop: ``alloop.io.pool.iter_batches`` (pre_buffer off, a 1 MB read buffer, each batch's columns
  written straight into one float32 matrix).

Usage: python benchmarks/bench_reader_memory.py [--rows 5000000] [--features 100] [--row-group
1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from peak import PEAK  # benchmarks/peak.py: the script's folder is on sys.path

READ = (
    PEAK
    + r"""
import json, sys, time, numpy as np, pyarrow.parquet as pq
mode, path, d = sys.argv[1], sys.argv[2], int(sys.argv[3])
cols = [f"f{j}" for j in range(d)]
t = time.perf_counter(); n = 0
if mode == "alloop":
    from alloop.io import pool as poolio
    for b in poolio.iter_batches(poolio.open_pool(path), batch_rows=65536):
        n += len(b.X)
else:
    pf = pq.ParquetFile(path) if mode == "prototype" else pq.ParquetFile(path, pre_buffer=False)
    for rb in pf.iter_batches(batch_size=65536, columns=["id", *cols]):
        x = np.column_stack([rb.column(c).to_numpy() for c in cols]).astype(np.float32)
        n += len(x)
print(json.dumps({"rows": n, "seconds": time.perf_counter() - t, "peak_mb": peak_mb()}))
"""
)

MODES = {
    "prototype": "pyarrow defaults + column_stack",
    "no-prebuffer": "pre_buffer=False + column_stack",
    "alloop": "alloop.io.pool.iter_batches",
}


def make_pool(path: Path, rows: int, d: int, row_group: int) -> None:
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, row_group):
        m = min(row_group, rows - start)
        x = rng.standard_normal((m, d), dtype=np.float32)
        table = pa.table(
            {
                "id": np.arange(start, start + m, dtype=np.int64),
                **{f"f{j}": x[:, j] for j in range(d)},
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=row_group)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--row-group", type=int, default=1_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.parquet"
        make_pool(path, args.rows, args.features, args.row_group)
        decoded_mb = args.row_group * args.features * 4 / 2**20
        print(
            f"{args.rows:,} rows x {args.features} float32, row groups of {args.row_group:,} "
            f"({decoded_mb:.0f} MB decoded each), {path.stat().st_size / 2**20:,.0f} MiB on disk",
            file=sys.stderr,
        )
        print("| reader | rows/s | peak RSS (MB) |\n|---|---|---|")
        for mode, what in MODES.items():
            out = subprocess.run(
                [sys.executable, "-c", READ, mode, str(path), str(args.features)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            print(
                f"| {mode}: {what} | {r['rows'] / r['seconds']:,.0f} | {r['peak_mb']:,.0f} |",
                flush=True,
            )
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
