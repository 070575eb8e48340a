"""Atomic, deterministic file writes and content hashes.

Every file alloop writes goes through ``write_bytes_atomic``: the bytes land in a hidden
``.tmp-*`` file in the same directory, are fsynced, and replace the target with ``os.replace``,
so a reader (or a crash) sees either the old file or the new one, never half of one.
Encoders produce identical bytes for identical input, so hashes double as change detectors.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLE_FORMATS = ("csv", "parquet", "jsonl")
# Cells starting with these are run as formulas by spreadsheets (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` all at once: temp file, fsync, rename, fsync the directory."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    """Atomically write ``obj`` as stable, human-readable JSON (sorted keys, no NaN)."""
    write_text_atomic(path, encode_json(obj))


def encode_json(obj) -> str:
    """The JSON text alloop stores: indent 2, sorted keys, NaN refused, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_table_atomic(path: Path, df: pd.DataFrame, fmt: str) -> None:
    """Atomically write ``df`` as csv, parquet or jsonl (see ``encode_table``)."""
    write_bytes_atomic(path, encode_table(df, fmt))


def encode_table(df: pd.DataFrame, fmt: str) -> bytes:
    """Encode ``df`` (index dropped) to bytes; identical frames give identical bytes."""
    if fmt == "csv":
        return _encode_csv(df)
    if fmt == "parquet":
        return _encode_parquet(df)
    if fmt == "jsonl":
        return _encode_jsonl(df)
    raise ValueError(f"unknown table format {fmt!r}; expected one of {TABLE_FORMATS}")


def _encode_csv(df: pd.DataFrame) -> bytes:
    """CSV with text cells guarded against spreadsheet formula execution."""
    guarded = df.copy()
    for col in guarded.columns:
        if _is_text(guarded[col]):
            guarded[col] = guarded[col].map(guard_formula)
    buf = io.StringIO()
    guarded.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)


def guard_formula(cell):
    """Prefix a text cell that a spreadsheet would run as a formula with a single quote."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


def unguard_formula(cell: str) -> str:
    """Undo ``guard_formula`` on a cell read back from CSV."""
    if len(cell) > 1 and cell[0] == "'" and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell


def _encode_parquet(df: pd.DataFrame) -> bytes:
    """Parquet, zstd, without the pandas index or pandas metadata (nothing time- or version-bound)."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _encode_jsonl(df: pd.DataFrame) -> bytes:
    """One JSON object per row, columns in frame order; missing values become null."""
    cols = [str(c) for c in df.columns]
    lines = []
    for row in df.itertuples(index=False, name=None):
        record = {c: to_json_value(v) for c, v in zip(cols, row)}
        lines.append(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def to_json_value(v):
    """A plain JSON value for a table cell or figure: numpy scalars unwrapped, NaN/NA -> None."""
    if isinstance(v, (list, tuple)):
        return [to_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return to_json_value(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def sha256_bytes(b: bytes) -> str:
    """Hex SHA-256 of ``b``."""
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems refuse to fsync a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
