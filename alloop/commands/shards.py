"""Query shards: N machines (or processes) each score one slice of the pool, then one merges.

``alloop query NAME --shard i/N`` (i from 0 to N-1) scores the rows [⌊i·n/N⌋, ⌊(i+1)·n/N⌋) of the
pool in pool order (files sorted by path, rows in file order). A row-range split, not a hash of the
id, so that each machine reads only its own slice of the files. It writes what one machine streaming
the whole pool would have kept from that slice (the top k rows, or greedy's candidate buffer), with
their scores and pool columns as stored, to ``runs/NAME/shards/round-RRRR-shard-i-of-N.parquet``.
It commits nothing and takes no lock (it only reads, and every file it reads is hash-checked against
the state it started from), so shards can run at the same time on a shared run directory, or on
copies of the run whose shard files are then brought together.

``alloop merge-queries NAME`` refuses shards that are missing, duplicated, or were scored from another
state of the run (checkpoint, labels, outstanding rows), with another strategy or over another pool;
then runs the strategy once more exactly as ``alloop query`` does, streaming the rows the shards kept
instead of the pool (see ``_merged``), and commits the round through the same path as ``alloop query``.
A strategy can be sharded when what it keeps from the stream is a top-k by a per-row score
(``streaming.stream_top``): every strategy alloop has.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import alloop
from alloop import strategies
from alloop.commands.common import open_pool_of
from alloop.commands.query import DEFAULT_BATCH_ROWS, check_format, commit_query, open_for_query, query_seed, round_of, select_rows
from alloop.commands.status import needs_training
from alloop.errors import UserError
from alloop.io import atomic, rundir
from alloop.io import pool as poolio
from alloop.io.lock import run_lock
from alloop.reporting import Reporter

SHARD_DIR = "shards"
META_KEY = b"alloop.shard"
SCORE_COL = "__alloop_score__"
FORMAT = 1
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_FILE = re.compile(r"round-(\d+)-shard-(\d+)-of-(\d+)\.parquet")
# What every shard of one round must agree on, and how to name it in a message.
_SAME = {"strategy": "--strategy", "ran": "the strategy that ran", "k": "-k", "seed": "--seed", "batch_rows": "the batch size",
         "pool": "the pool"}


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N; UserError otherwise."""
    m = _SPEC.fullmatch(spec or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard takes i/N with 0 <= i < N (e.g. --shard 0/4 ... --shard 3/4), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_file(run: rundir.Run, round_: int, i: int, n: int) -> Path:
    return run.path / SHARD_DIR / f"round-{round_:04d}-shard-{i}-of-{n}.parquet"


# --- query one shard -----------------------------------------------------------------------------


def query_shard(
    name: str, shard: str, *, k: int = 20, strategy: str | None = None, seed: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS, devices: int = 1, reporter: Reporter | None = None,
) -> dict:
    """Score slice i of N of the pool and write its candidates for the next round (no commit)."""
    reporter = reporter or Reporter()
    i, n = parse_shard(shard)
    run, strat = open_for_query(name, k, strategy, devices)
    if needs_training(run):
        raise UserError(f"the model of run '{run.name}' is older than its labels: run `alloop train {run.name}` once, "
                        "then the shards, so that every shard scores with the same model")
    info = open_pool_of(run)
    start, stop = poolio.shard_rows(info.n_rows, i, n)
    part = dataclasses.replace(info, rows=(start, stop), n_rows=stop - start)
    seed = query_seed(run, seed)
    sel = select_rows(run, part, round_of(run, info, seed, batch_rows, devices), strat, k, reporter)
    if sel.kept is None or (sel.kept.rows is None and len(sel.kept.ids)):
        raise UserError(f"--shard is not available for --strategy {strat.name}: run `alloop query {run.name}` on one machine")
    rows = sel.kept.rows if sel.kept.rows is not None else poolio.empty_rows(info)  # an empty slice (N > rows)
    meta = _meta(run, info, sel, i, n, (start, stop), k, strat.name, seed, batch_rows)
    path = shard_file(run, run.round + 1, i, n)
    path.parent.mkdir(exist_ok=True)
    atomic.write_bytes_atomic(path, _encode(rows, sel.kept.scores, meta))
    return {"command": "query-shard", "shard": f"{i}/{n}", "round": run.round + 1, "rows_scored": stop - start,
            "rows": len(sel.kept.ids), "strategy": sel.strategy, "path": str(path), "note": sel.note}


def _meta(run, info, sel, i, n, rows, k, strategy, seed, batch_rows) -> dict:
    return {
        "format": FORMAT, "alloop_version": alloop.__version__, "host": socket.gethostname(),
        "round": run.round + 1, "shard": i, "of": n, "rows": list(rows),
        "state_sha256": _state_sha(run), "checkpoint_sha256": run.state.get("checkpoint_sha256"),
        "strategy": strategy, "ran": sel.strategy, "note": sel.note, "k": k, "seed": seed, "batch_rows": batch_rows,
        "pool": {"rows": info.n_rows, "fingerprint": info.fingerprint, "files": _layout(info)},
    }


def _state_sha(run: rundir.Run) -> str:
    return atomic.sha256_bytes(atomic.encode_json(run.state).encode())


def _layout(info: poolio.PoolInfo) -> str:
    """SHA-256 of the pool's file names (relative) and row counts: the row-range split depends on them."""
    root = Path(info.path)
    names = [Path(f).name if Path(f) == root else Path(f).relative_to(root).as_posix() for f in info.files]
    counts = [pq.ParquetFile(f).metadata.num_rows for f in info.files]
    return atomic.sha256_bytes(json.dumps(list(zip(names, counts))).encode())


def _encode(rows: pa.Table, scores: np.ndarray, meta: dict) -> bytes:
    table = rows.append_column(SCORE_COL, pa.array(scores, pa.float64()))
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# --- merge the shards ----------------------------------------------------------------------------


def merge_queries(name: str, *, fmt: str = "csv", wait: float = 5.0, reporter: Reporter | None = None) -> dict:
    """Check the next round's shards, choose the rows one `alloop query` would have chosen, commit them."""
    reporter = reporter or Reporter()
    check_format(fmt)
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        shards = _read_shards(run, run.round + 1)
        meta = _check(run, shards)
        sel = _merged(run, shards, meta, reporter)
        record, path = commit_query(run, None, sel, meta["strategy"], fmt, reporter, extra={"shards": meta["of"]})
        _remove_stale(run, record["round"])
    return {**record, "path": str(path), "note": sel.note}


def _read_shards(run: rundir.Run, round_: int) -> list[tuple[Path, dict, pa.Table]]:
    folder = run.path / SHARD_DIR
    files = sorted(f for f in folder.glob(f"round-{round_:04d}-shard-*.parquet")) if folder.is_dir() else []
    if not files:
        raise UserError(f"run '{run.name}' has no query shards for round {round_} in {folder}: "
                        f"run `alloop query {run.name} --shard i/N` for every i from 0 to N-1 first")
    return [_read_shard(run, f) for f in files]


def _read_shard(run: rundir.Run, f: Path) -> tuple[Path, dict, pa.Table]:
    rel = f.relative_to(run.path)
    try:
        table = pq.read_table(f)
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{rel} is not a readable alloop query shard ({reason}): delete it and run that shard again") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{rel} was written by another alloop version (shard format {meta.get('format')}): run that shard again")
    stored = {key: v for key, v in (table.schema.metadata or {}).items() if key != META_KEY}  # the pool's own, as read
    return f, meta, table.replace_schema_metadata(stored or None)


def _check(run: rundir.Run, shards) -> dict:
    """The shards' common metadata, after refusing any set that one machine's query would not match."""
    first = shards[0][1]
    where = {id(m): f.relative_to(run.path) for f, m, _ in shards}
    for _, m, _ in shards:
        if m["of"] != first["of"]:
            raise UserError(f"{where[id(first)]} and {where[id(m)]} split the pool differently (into {first['of']} and {m['of']} shards): "
                            f"keep the files of one split, delete the others")
    _check_complete(run, shards, first["of"], where)
    for _, m, _ in shards:
        _check_state(run, m, where[id(m)])
        for key, what in _SAME.items():
            if m[key] != first[key]:
                raise UserError(f"{where[id(first)]} and {where[id(m)]} differ in {what} ({first[key]!r} and {m[key]!r}): "
                                f"run every shard with the same options")
    return first


def _check_complete(run, shards, n: int, where: dict) -> None:
    seen: dict[int, Path] = {}
    for _, m, _ in shards:
        if m["shard"] in seen:
            raise UserError(f"shard {m['shard']}/{n} appears twice ({seen[m['shard']]} and {where[id(m)]}): delete one of them")
        seen[m["shard"]] = where[id(m)]
    missing = [i for i in range(n) if i not in seen]
    if missing:
        runs = "; ".join(f"`alloop query {run.name} --shard {i}/{n}`" for i in missing[:4])
        raise UserError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{n}' for i in missing)} "
                        f"of round {run.round + 1}: run {runs}{' ...' if len(missing) > 4 else ''}, then merge again")


def _check_state(run: rundir.Run, m: dict, rel) -> None:
    if m["round"] != run.round + 1:
        raise UserError(f"{rel} says round {m['round']} but the next round of run '{run.name}' is {run.round + 1}: delete it")
    if m["checkpoint_sha256"] != run.state.get("checkpoint_sha256"):
        raise UserError(f"{rel} was scored with another model (checkpoint sha256 {str(m['checkpoint_sha256'])[:12]}, "
                        f"the run's is {str(run.state.get('checkpoint_sha256'))[:12]}): run that shard again")
    if m["state_sha256"] != _state_sha(run):
        raise UserError(f"run '{run.name}' changed (labels or outstanding rows) since {rel} was scored: run that shard again")


def _merged(run: rundir.Run, shards, meta: dict, reporter: Reporter) -> strategies.Selection:
    """The strategy run again as `alloop query` runs it, streaming the shards' kept rows instead of the pool.

    Each shard kept what the single stream keeps from its slice (for every strategy, the top rows by a
    per-row score: the picks, or the candidates they are drawn from), so the union holds all the single
    stream keeps and nothing it would not beat; the same scores, the same pick (top-k, greedy, a seeded
    diversity draw) and the same tie-break then give the same rows. The pool is opened for the labeled
    rows some strategies need; its unlabeled rows are not read again.
    """
    info = open_pool_of(run)
    kept = dataclasses.replace(info, scan=tuple(str(f) for f, _, _ in shards), rows=None, n_rows=sum(t.num_rows for _, _, t in shards))
    rnd = round_of(run, info, meta["seed"], meta["batch_rows"])
    return select_rows(run, kept, rnd, strategies.get(meta["strategy"]), meta["k"], reporter)


def _remove_stale(run: rundir.Run, done_round: int) -> None:
    """Shard files of rounds up to the one just committed are spent."""
    folder = run.path / SHARD_DIR
    for f in folder.glob("round-*-shard-*.parquet") if folder.is_dir() else ():
        m = _FILE.fullmatch(f.name)
        if m and int(m.group(1)) <= done_round:
            f.unlink(missing_ok=True)
