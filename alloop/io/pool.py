"""The unlabeled pool: a Parquet file or a directory of them, local or in object storage, read in streamed batches.

A pool is a local path or a URI that pyarrow's filesystems understand (``s3://bucket/prefix``,
``gs://bucket/prefix``, ``hdfs://...``), with credentials and endpoint from the standard environment
variables and config files (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``~/.aws/credentials``, ...);
``with_endpoint`` writes an endpoint override into an ``s3://`` URI. A missing bucket, a denied read or
an unreachable endpoint is a UserError naming the pool.

Nothing here loads a whole pool. Only the id, feature (and on request target) columns are
read, one record batch at a time, file by file. What bounds memory: pyarrow's Parquet reader
decodes a whole row group of the selected columns before slicing it into batches, so peak
memory is about ``max(batch_rows, rows per row group) x selected columns x 8 bytes``; pools
written with row groups of ~64k-1M rows (pyarrow's default is 1M) stay within a few hundred MB.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from alloop.errors import UserError
from alloop.io.atomic import sha256_bytes

DEFAULT_BATCH_ROWS = 65536
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


@dataclass(frozen=True)
class PoolInfo:
    """What ``open_pool`` learned from the Parquet metadata (no data rows read)."""

    path: str
    files: tuple[str, ...]
    id_col: str
    id_kind: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    n_rows: int
    fingerprint: str
    filesystem: pafs.FileSystem | None = (
        None  # where ``files`` are (object storage); None: the local disk
    )


@dataclass
class PoolBatch:
    """One streamed batch: ids (int64 or object str), X (m, d) float32, Y (m, t) or None.

    ``table`` holds the same rows' columns as stored (id, features, targets), so the rows a query
    keeps can be written out without reading the pool a second time.
    """

    ids: np.ndarray
    X: np.ndarray
    Y: np.ndarray | None = None
    table: pa.RecordBatch | None = None


def open_pool(path, id_col: str = "id", features=None, targets=()) -> PoolInfo:
    """Check the pool's files and schema and choose its feature columns.

    Features default to every integer or float column except the id, the targets and a stored
    pandas index, in file order. Raises UserError for any problem a user can fix.
    """
    shown = str(path)
    fs, root = locate(path)
    files = _pool_files(fs, root, shown)
    schema, n_rows = _read_schemas(fs, files, root, shown)
    targets = tuple(targets)
    _check_partition_keys(files, root, schema, [id_col, *targets, *(features or ())], shown)
    id_kind = _id_kind(schema, id_col, shown)
    _check_targets(schema, targets, id_col, shown)
    feats = _choose_features(schema, id_col, targets, features, shown)
    if n_rows == 0:
        raise UserError(f"pool '{shown}' has no rows: add data to it or pass another --pool")
    return PoolInfo(
        path=shown if fs is not None else root,
        files=tuple(files),
        id_col=id_col,
        id_kind=id_kind,
        features=feats,
        targets=targets,
        n_rows=n_rows,
        fingerprint=schema_fingerprint(schema, (id_col, *feats)),
        filesystem=fs,
    )


_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_uri(path) -> bool:
    """True for a pool in object storage (``s3://``, ``gs://``, ...); local paths and ``file://`` are not."""
    m = _URI.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def with_endpoint(uri: str, endpoint: str | None) -> str:
    """An ``s3://`` URI with an endpoint override (``http://host:port`` or ``host:port``) as pyarrow reads it
    from the URI's query; other URIs and local paths are returned as they are."""
    if not endpoint or not str(uri).lower().startswith("s3://"):
        if endpoint and is_uri(uri):
            raise UserError(
                f"--endpoint-url applies to s3:// pools only, not {uri!r}: leave it out"
            )
        return str(uri)
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not parsed.netloc:
        raise UserError(
            f"--endpoint-url {endpoint!r} is not an endpoint: pass http://HOST:PORT or https://HOST"
        )
    base, _, query = str(uri).partition("?")
    params = [
        (k, v) for k, v in urllib.parse.parse_qsl(query) if k not in ("endpoint_override", "scheme")
    ]
    params += [("endpoint_override", parsed.netloc), ("scheme", parsed.scheme)]
    return f"{base}?{urllib.parse.urlencode(params)}"


def locate(path) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path in it) of a pool: (None, absolute local path) on this machine's disk."""
    text = str(path)
    if text.lower().startswith("file://"):
        text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    if not is_uri(text):
        return None, str(Path(text).expanduser().resolve())
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise remote_error(text, e) from None
    return fs, root.rstrip("/")


def remote_error(shown: str, err: Exception) -> UserError:
    """One line for a pool in object storage that cannot be reached or read, with what to do about it."""
    text = " ".join(str(err).split()) or type(err).__name__
    low = text.lower().replace("_", "")
    if any(
        w in low
        for w in (
            "accessdenied",
            "access denied",
            "forbidden",
            "invalidaccesskey",
            "signaturedoesnotmatch",
            "credential",
            "invalidtoken",
            "expiredtoken",
            "unauthorized",
            "403",
        )
    ):
        hint = "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws) and the bucket's policy"
    elif (
        "nosuchbucket" in low
        or "bucket does not exist" in low
        or ("bucket" in low and "not found" in low)
    ):
        hint = "the bucket does not exist: check the URI's bucket name (and the endpoint)"
    elif any(
        w in low for w in ("network", "connect", "resolve", "timeout", "timed out", "unreachable")
    ):
        hint = "the endpoint is unreachable: check the network and the endpoint (--endpoint-url or AWS_ENDPOINT_URL)"
    else:
        hint = "check the URI, the credentials and the endpoint"
    detail = text if len(text) <= 200 else text[:197] + "..."
    return UserError(f"pool '{_display(shown)}' cannot be read: {hint} ({detail})")


def _pool_files(fs, root: str, shown: str) -> list[str]:
    """The pool's Parquet files sorted by path; names starting with '.' or '_' are skipped."""
    if fs is not None:
        return _remote_files(fs, root, shown)
    top = Path(root)
    if not top.exists():
        raise UserError(
            f"pool '{shown}' not found: pass --pool with a Parquet file or a directory of Parquet files"
        )
    if top.is_file():
        return [root]
    files = sorted(
        str(p)
        for p in top.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(top).parts)
    )
    if not files:
        raise UserError(
            f"pool directory '{shown}' has no .parquet files: pass --pool with a Parquet file or a directory of them"
        )
    return files


def _remote_files(fs, root: str, shown: str) -> list[str]:
    try:
        top = fs.get_file_info(root)
        if top.type == pafs.FileType.File:
            return [root]
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        found = []
    except (pa.ArrowException, OSError, ValueError) as e:
        raise remote_error(shown, e) from None
    files = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.path.endswith(".parquet")
        and not any(part.startswith((".", "_")) for part in _rel(f.path, root).split("/"))
    )
    if not files:
        missing_bucket(fs, root, shown)
        what = (
            "not found"
            if top.type == pafs.FileType.NotFound and not found
            else "has no .parquet files"
        )
        raise UserError(
            f"pool '{_display(shown)}' {what}: pass --pool with a Parquet file or a prefix holding Parquet files"
        )
    return files


def missing_bucket(fs, root: str, shown: str, what: str = "pool") -> None:
    """Raise the one-line UserError for an object whose bucket does not exist (or cannot be asked); return when it exists."""
    bucket = root.split("/", 1)[0]
    try:
        missing = bucket != root and fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except (pa.ArrowException, OSError, ValueError) as e:
        raise remote_error(shown, e) from None
    if missing:
        raise UserError(
            f"{what} '{_display(shown)}' cannot be read: the bucket does not exist: check the URI's bucket name (and the endpoint)"
        )


def _display(uri: str) -> str:
    """A pool URI as messages show it: without its query (the endpoint options)."""
    return str(uri).partition("?")[0]


def _check_partition_keys(files: list[str], root: str, schema: dict, wanted, shown: str) -> None:
    """A column asked for that exists only as a directory partition key (``key=value`` in the files'
    paths, Hive style) gets its own message: alloop reads the columns stored in the files only."""
    keys = {
        part.split("=", 1)[0]
        for f in files
        if f != root
        for part in _rel(f, root).split("/")[:-1]
        if "=" in part
    }
    for c in wanted:
        if c not in schema and c in keys:
            raise UserError(
                f"column '{c}' of pool '{shown}' is a directory partition key ({c}=...), not stored in the files, and alloop "
                f"reads only stored columns: write '{c}' into the Parquet files, or leave it out"
            )


def _read_schemas(
    fs, files: list[str], root: str, shown: str
) -> tuple[dict[str, pa.DataType], int]:
    """The shared {column: type} of all files and their total row count; differing schemas are an error."""
    first, n_rows = None, 0
    for f in files:
        with _parquet_file(f, fs, shown) as pf:
            cols = {field.name: field.type for field in pf.schema_arrow}
            n_rows += pf.metadata.num_rows
        if first is None:
            first = (f, cols)
        elif cols != first[1]:
            raise _schema_differs(_rel(first[0], root), first[1], _rel(f, root), cols)
    return first[1], n_rows


def _rel(f: str, root: str) -> str:
    """A pool file's name relative to the pool (its own name for a one-file pool)."""
    if f == root:
        return f.replace("\\", "/").rsplit("/", 1)[-1]
    return (
        Path(f).relative_to(root).as_posix()
        if Path(root).is_absolute()
        else f[len(root) :].lstrip("/")
    )


def _schema_differs(fa: str, a: dict, fb: str, b: dict) -> UserError:
    only_a, only_b = [c for c in a if c not in b], [c for c in b if c not in a]
    if only_a or only_b:
        what = (
            f"columns only in the first: {only_a or 'none'}, only in the second: {only_b or 'none'}"
        )
    else:
        col = next(c for c in a if a[c] != b[c])
        what = f"column '{col}' is {a[col]} in the first, {b[col]} in the second"
    return UserError(
        f"pool files '{fa}' and '{fb}' have different schemas ({what}): rewrite them with one schema"
    )


@contextlib.contextmanager
def _parquet_file(f, fs=None, shown: str | None = None):
    """Open one Parquet file, turning pyarrow's errors for a bad file into a UserError."""
    try:
        # pre_buffer (pyarrow's default) caches every column chunk it has read until the file is
        # closed, so memory grew with the file; plain buffered reads keep it at one row group.
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20, filesystem=fs)
    except _READ_ERRORS as e:
        if fs is not None and not isinstance(e, pa.ArrowInvalid):
            raise remote_error(shown or f, e) from None
        raise _unreadable(f, e) from None
    with pf:
        yield pf


def _unreadable(f, err: Exception) -> UserError:
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return UserError(
        f"pool file '{f}' is not a readable Parquet file ({reason}): replace it or remove it from the pool"
    )


def _id_kind(schema: dict, id_col: str, shown: str) -> str:
    if id_col not in schema:
        raise UserError(
            f"pool '{shown}' has no id column '{id_col}' (columns: {_names(schema)}): pass --id-col NAME"
        )
    t = schema[id_col]
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "str"
    raise UserError(
        f"pool id column '{id_col}' has type {t}, but ids must be integers or strings: pass --id-col NAME for another column"
    )


def _check_targets(schema: dict, targets: tuple, id_col: str, shown: str) -> None:
    for t in targets:
        if t not in schema:
            raise UserError(
                f"pool '{shown}' has no target column '{t}' (columns: {_names(schema)}): fix --target or leave it out"
            )
        if t == id_col:
            raise UserError(
                f"column '{t}' cannot be both the id and a target: pass another --target or --id-col"
            )


def _choose_features(
    schema: dict, id_col: str, targets: tuple, features, shown: str
) -> tuple[str, ...]:
    if features is None:
        feats = tuple(
            c
            for c, t in schema.items()
            if _numeric(t)
            and c != id_col
            and c not in targets
            and not c.startswith("__index_level_")
        )
        if not feats:
            raise UserError(
                f"pool '{shown}' has no numeric feature columns (columns: {_names(schema)}): add some or pass --features NAMES"
            )
        return feats
    feats = tuple(features)
    if not feats:
        raise UserError(
            "no features given: pass --features with at least one numeric column, or leave it out to use all"
        )
    for c in feats:
        _check_feature(schema, c, id_col, targets, shown)
    return feats


def _check_feature(schema: dict, c: str, id_col: str, targets: tuple, shown: str) -> None:
    if c not in schema:
        raise UserError(
            f"pool '{shown}' has no feature column '{c}' (columns: {_names(schema)}): fix --features"
        )
    if c == id_col or c in targets:
        raise UserError(
            f"column '{c}' cannot be both a feature and the id or a target: remove it from --features"
        )
    if not _numeric(schema[c]):
        raise UserError(
            f"pool feature '{c}' has type {schema[c]}, not a number: remove it from --features"
        )


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _names(schema: dict, limit: int = 12) -> str:
    names = list(schema)
    more = f", ... {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def schema_fingerprint(schema: dict, columns) -> str:
    """SHA-256 of the sorted (name, arrow type) of ``columns``: stable when rows are added."""
    pairs = sorted([c, str(schema[c])] for c in columns)
    return sha256_bytes(json.dumps(pairs).encode())


def check_fingerprint(info: PoolInfo, expected: str, run_name: str) -> None:
    """UserError if the pool's id/feature columns are not the ones the run was created with."""
    if info.fingerprint != expected:
        cols = ", ".join((info.id_col, *info.features))
        raise UserError(
            f"pool schema changed since `alloop init {run_name}`: the id/feature columns of '{info.path}' "
            f"({cols}) are not the ones recorded; restore the pool or init a new run"
        )


def pool_schema(path) -> dict[str, pa.DataType]:
    """{column: arrow type} shared by the pool's files (metadata only); UserError if missing or unreadable."""
    fs, root = locate(path)
    return _read_schemas(fs, _pool_files(fs, root, str(path)), root, str(path))[0]


def open_recorded(
    path, id_col: str, features, targets, fingerprint: str, run_name: str
) -> PoolInfo:
    """Open a run's pool, checking its id/feature columns against the fingerprint taken at init.

    A column removed or retyped since init is reported as a schema change (not as a bad
    ``--features`` value); a target column no longer in the pool is just not read.
    """
    schema = pool_schema(path)
    gone = [c for c in (id_col, *features) if c not in schema]
    if gone:
        raise UserError(
            f"pool schema changed since `alloop init {run_name}`: column '{gone[0]}' is no longer in "
            f"'{path}'; restore the pool or init a new run"
        )
    if schema_fingerprint(schema, (id_col, *features)) != fingerprint:
        raise UserError(
            f"pool schema changed since `alloop init {run_name}`: the types of the id/feature columns of "
            f"'{path}' ({', '.join((id_col, *features))}) are not the ones recorded; restore the pool or init a new run"
        )
    return open_pool(
        path, id_col=id_col, features=features, targets=[t for t in targets if t in schema]
    )


def iter_batches(
    info: PoolInfo,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    columns: str = "features",
    with_targets: bool = False,
) -> Iterator[PoolBatch]:
    """Stream the pool as PoolBatch objects of at most ``batch_rows`` rows, files in order.

    ``columns="features"`` reads the id and feature columns; ``columns="ids"`` reads only the id
    (X then has 0 columns). Features must be finite: a null, NaN or inf raises UserError.
    """
    if columns not in ("features", "ids"):
        raise ValueError(f"columns must be 'features' or 'ids', got {columns!r}")
    return _batches(info, batch_rows, columns, with_targets, np.float32)


def _batches(
    info: PoolInfo, batch_rows: int, columns: str, with_targets: bool, dtype
) -> Iterator[PoolBatch]:
    feats = info.features if columns == "features" else ()
    targets = info.targets if with_targets else ()
    for rb in _rebatched(
        _record_batches(info, [info.id_col, *feats, *targets], batch_rows), batch_rows
    ):
        yield _pool_batch(rb, info, feats, targets, with_targets, dtype)


def pool_batch(rb: pa.RecordBatch, info: PoolInfo) -> PoolBatch:
    """A record batch of the pool's id and feature columns (as read by another engine, e.g. Ray Data) as a
    PoolBatch, checked and converted exactly as ``iter_batches`` does."""
    return _pool_batch(rb, info, info.features, (), False, np.float32)


def _pool_batch(
    rb: pa.RecordBatch, info: PoolInfo, feats, targets, with_targets: bool, dtype
) -> PoolBatch:
    ids = _ids(rb.column(info.id_col), info)
    X = _features(rb, feats, ids, dtype)
    Y = _targets(rb, targets) if with_targets else None
    return PoolBatch(ids, X, Y, rb)


def _rebatched(batches: Iterator[pa.RecordBatch], n: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of exactly ``n`` (the last one shorter), across row groups and files.

    Full batches keep a scorer's input shape fixed (no padding, one compilation) however the pool's
    files and row groups happen to be sized; only a batch that straddles a boundary is copied.
    """
    parts, have = [], 0
    for rb in batches:
        while rb.num_rows:
            take = min(n - have, rb.num_rows)
            parts.append(rb if take == rb.num_rows else rb.slice(0, take))
            have, rb = have + take, rb.slice(take)
            if have == n:
                yield _concat_batches(parts)
                parts, have = [], 0
    if have:
        yield _concat_batches(parts)


def concat_batches(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One record batch of the rows of ``parts`` (same columns; the first one's schema metadata)."""
    return _concat_batches(parts)


def _concat_batches(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(parts) == 1:
        return parts[0]
    schema = parts[0].schema
    return (
        pa.Table.from_batches([p.replace_schema_metadata(schema.metadata) for p in parts], schema)
        .combine_chunks()
        .to_batches()[0]
    )


def column_batches(
    info: PoolInfo, name: str, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """(ids, values) of one column, batch by batch, nulls kept: the caller says what they mean."""
    for rb in _record_batches(info, [info.id_col, name], batch_rows):
        yield _ids(rb.column(info.id_col), info), rb.column(name)


def _record_batches(info: PoolInfo, cols: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of ``cols`` from every file of the pool, in order; read errors become UserError."""
    for f in info.files:
        with _parquet_file(f, info.filesystem, info.path) as pf:
            yield from _file_batches(f, pf, cols, batch_rows, info)


def _file_batches(f, pf, cols, batch_rows: int, info: PoolInfo) -> Iterator[pa.RecordBatch]:
    it = pf.iter_batches(batch_size=batch_rows, columns=cols, use_threads=False)
    while True:
        try:
            rb = next(it)
        except StopIteration:
            return
        except _READ_ERRORS as e:
            if info.filesystem is not None and not isinstance(e, pa.ArrowInvalid):
                raise remote_error(info.path, e) from None
            raise _unreadable(f, e) from None
        yield rb


def _ids(col: pa.Array, info: PoolInfo) -> np.ndarray:
    if col.null_count:
        raise UserError(
            f"pool has a missing id in column '{info.id_col}': fill it in or drop the row"
        )
    if info.id_kind == "int":
        return col.to_numpy().astype(np.int64, copy=False)
    return col.to_numpy(zero_copy_only=False).astype(object, copy=False)


def _features(rb: pa.RecordBatch, feats, ids: np.ndarray, dtype) -> np.ndarray:
    """(m, d) C-contiguous array of the features; a null/NaN/inf (or float32 overflow) is an error."""
    X = np.empty((rb.num_rows, len(feats)), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for j, name in enumerate(feats):
            col = rb.column(name)
            if col.null_count:
                i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
                raise _bad_feature(name, ids[i])
            X[:, j] = col.to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(X)
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))
        raise _bad_feature(feats[j], ids[int(np.argmax(bad[:, j]))])
    return X


def _bad_feature(name: str, example_id) -> UserError:
    return UserError(
        f"pool has a missing or non-finite value in feature '{name}' (id {example_id}): "
        "clean the pool or drop the column with --features"
    )


def _targets(rb: pa.RecordBatch, targets) -> np.ndarray:
    """(m, t) float64 (nulls as NaN) when every target is numeric, else an object array."""
    cols = [rb.column(t) for t in targets]
    if all(_numeric(c.type) for c in cols):
        Y = np.empty((rb.num_rows, len(cols)), dtype=np.float64)
        for j, c in enumerate(cols):
            Y[:, j] = c.to_numpy(zero_copy_only=False)
        return Y
    Y = np.empty((rb.num_rows, len(cols)), dtype=object)
    for j, c in enumerate(cols):
        Y[:, j] = c.to_pylist()
    return Y


def feature_moments(
    info: PoolInfo, batch_rows: int = DEFAULT_BATCH_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std (float64) in one streaming pass.

    Batches are merged with Chan et al.'s parallel update, which stays accurate when the mean is
    large compared with the spread. A constant column gets std exactly 0 (the caller uses 1).
    """
    d = len(info.features)
    n, mean, m2 = 0, np.zeros(d), np.zeros(d)
    lo, hi = np.full(d, np.inf), np.full(d, -np.inf)
    for batch in _batches(info, batch_rows, "features", False, np.float64):
        k = len(batch.ids)
        if k == 0:
            continue
        with np.errstate(
            over="ignore", invalid="ignore"
        ):  # huge values give inf: the caller refuses them
            n, mean, m2 = _chan_merge(n, mean, m2, batch.X)
        lo, hi = np.minimum(lo, batch.X.min(axis=0)), np.maximum(hi, batch.X.max(axis=0))
    with np.errstate(over="ignore", invalid="ignore"):
        std = np.sqrt(m2 / max(n, 1))
    const = lo == hi
    std[const], mean[const] = 0.0, lo[const]
    return mean, std


def _chan_merge(n: int, mean: np.ndarray, m2: np.ndarray, X: np.ndarray):
    """Fold batch ``X`` into running (count, mean, sum of squared deviations)."""
    k = X.shape[0]
    b_mean = X.mean(axis=0)
    b_m2 = np.square(X - b_mean).sum(axis=0)
    total = n + k
    delta = b_mean - mean
    return total, mean + delta * (k / total), m2 + b_m2 + np.square(delta) * (n * k / total)


def scan_ids(info: PoolInfo, batch_rows: int = 4 * DEFAULT_BATCH_ROWS) -> np.ndarray:
    """Every id in pool order (int64, or object array of str), reading only the id column."""
    parts = [b.ids for b in _batches(info, batch_rows, "ids", False, np.float32)]
    empty = np.empty(0, dtype=np.int64 if info.id_kind == "int" else object)
    return np.concatenate(parts) if parts else empty


def check_unique_ids(info: PoolInfo) -> None:
    """UserError naming a duplicated id."""
    ids = scan_ids(info)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        raise UserError(
            f"pool has duplicate id {ids[int(np.argmax(dup))]} in column '{info.id_col}': "
            "ids must be unique; fix the pool or pass --id-col NAME for a unique column"
        )


def as_ids(ids, id_kind: str) -> np.ndarray:
    """``ids`` as the array type the pool uses: int64, or object array of str."""
    if id_kind == "int":
        return np.asarray(ids).astype(np.int64, copy=False).reshape(-1)
    return np.array([str(i) for i in np.asarray(ids, dtype=object).reshape(-1)], dtype=object)


def missing_ids(info: PoolInfo, ids) -> np.ndarray:
    """The ``ids`` (first-seen order, deduplicated) that are not in the pool; reads only the id column."""
    want = pd.unique(as_ids(ids, info.id_kind))
    found = _found_ids(info, want)
    return np.array([i for i in want if i not in found], dtype=want.dtype)


def require_ids(info: PoolInfo, ids) -> None:
    """UserError listing up to 5 of ``ids`` that are not in the pool."""
    missing = missing_ids(info, ids)
    if len(missing):
        raise _not_in_pool(missing)


def _found_ids(info: PoolInfo, want: np.ndarray) -> set:
    found: set = set()
    for rb in _filtered(info, [info.id_col], want):
        found.update(rb.column(info.id_col).to_pylist())
    return found


def _filtered(
    info: PoolInfo, cols: list[str], want: np.ndarray, batch_rows: int = DEFAULT_BATCH_ROWS
):
    """Record batches holding only the rows whose id is in ``want``; stops once all were seen."""
    if len(want) == 0:
        return
    value_set = _id_array(want, info.id_kind)
    seen: set = set()
    with contextlib.closing(_record_batches(info, cols, batch_rows)) as batches:
        for rb in batches:
            idcol = rb.column(info.id_col).cast(value_set.type)
            sub = rb.filter(pc.is_in(idcol, value_set=value_set))
            if sub.num_rows:
                seen.update(sub.column(info.id_col).to_pylist())
                yield sub
            if len(seen) >= len(want):
                return


def _id_array(ids: np.ndarray, id_kind: str) -> pa.Array:
    return pa.array(ids, type=pa.int64() if id_kind == "int" else pa.string())


def _not_in_pool(missing: np.ndarray) -> UserError:
    examples = ", ".join(str(i) for i in missing[:5])
    n = len(missing)
    what = f"id {examples} is" if n == 1 else f"{n} ids are"
    eg = "" if n == 1 else f" (e.g. {examples})"
    return UserError(f"{what} not in the pool{eg}: check the file's id column")


def take_rows(info: PoolInfo, ids, with_targets: bool = False) -> pd.DataFrame:
    """The pool rows for ``ids`` in the order of ``ids``: id, features (and targets) as stored."""
    ids = as_ids(ids, info.id_kind)
    want = pd.unique(ids)
    cols = [info.id_col, *info.features, *(info.targets if with_targets else ())]
    parts = list(_filtered(info, cols, want))
    table = pa.Table.from_batches(parts) if parts else _empty_table(info, cols)
    df = table.to_pandas().drop_duplicates(subset=info.id_col)
    pos = pd.Index(df[info.id_col]).get_indexer(ids)
    if (pos < 0).any():
        raise _not_in_pool(pd.unique(ids[pos < 0]))
    return df.iloc[pos].reset_index(drop=True)


def empty_rows(info: PoolInfo) -> pa.Table:
    """An empty table with the pool's id and feature columns as stored."""
    return _empty_table(info, [info.id_col, *info.features])


def _empty_table(info: PoolInfo, cols: list[str]) -> pa.Table:
    with _parquet_file(info.files[0], info.filesystem, info.path) as pf:
        schema = pf.schema_arrow
    return pa.schema([schema.field(c) for c in cols]).empty_table()
