"""Label files the user sends back (CSV, Parquet, JSONL) and the checks before they are ingested.

Reading is strict and every problem is one UserError line naming the fix: a wrong label that
slips in silently is worse than a refused file. Rows whose target cells are all blank are not
an error: those ids simply stay outstanding. Extra columns (rank, score, features) are ignored.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from alloop.errors import UserError
from alloop.io.atomic import unguard_formula

LABEL_EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json-lines": "jsonl",
}
_INT = re.compile(r"[+-]?\d+")
_INTEGRAL_DECIMAL = re.compile(r"([+-]?\d+)\.0*")


@dataclass
class LabelFile:
    """Parsed labels: ``ids`` with ``values`` ((n, t) float64, or (n,) str objects for
    classification), ``blank_ids`` whose targets were left blank, and ``skipped_ids`` that the
    labeler declined to answer (they go back to the pool)."""

    ids: np.ndarray
    values: np.ndarray
    blank_ids: np.ndarray
    skipped_ids: np.ndarray | None = None  # rows the labeler declined (a skipped Label Studio task)


@dataclass
class _Raw:
    """A label file's id and target cells as read, before any interpretation."""

    ids: list
    targets: list[list]
    where: Callable[[int], str]
    decimal_comma: bool = (
        False  # a ';'-separated CSV (a spreadsheet's in a locale that writes 3,5 for 3.5)
    )


def read_label_file(
    path, id_col: str, targets: tuple[str, ...], id_kind: str, task: str = "regression"
) -> LabelFile:
    """Read and check a label file; the format comes from the extension."""
    path, targets = Path(path), tuple(targets)
    if task == "classification" and len(targets) != 1:
        raise ValueError("classification takes exactly one target column")
    fmt = _format(path)
    raw = _READERS[fmt](path, id_col, targets)
    if not raw.ids:
        raise UserError(
            f"label file '{path}' has no rows: fill in some labels, or check you sent the right file"
        )
    return _build(raw, path, targets, id_kind, task)


def read_id_file(path, id_col: str, id_kind: str) -> np.ndarray:
    """The ids a file lists, parsed as the pool's: a table with the id column (CSV, Parquet,
    JSONL; other columns ignored) or a .txt file of one id per line. Duplicates count once."""
    path = Path(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        cells = [(c.strip(), f"line {n}") for n, c in enumerate(lines, 1) if c.strip()]
    else:
        raw = _READERS[_format(path)](path, id_col, ())
        cells = [(v, raw.where(i)) for i, v in enumerate(raw.ids)]
    if not cells:
        raise UserError(f"id file '{path}' lists no ids: write one id per row")
    ids = dict.fromkeys(_parse_id(v, id_kind, path, where) for v, where in cells)
    return np.array(list(ids), dtype=np.int64 if id_kind == "int" else object)


def _format(path: Path) -> str:
    if not path.exists():
        raise UserError(f"label file '{path}' not found: check the path")
    if not path.is_file():
        raise UserError(
            f"label file '{path}' is not a file: pass the path of a .csv, .parquet or .jsonl file"
        )
    fmt = LABEL_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"label file '{path}' has an unknown extension '{path.suffix}': save it as .csv, .parquet or .jsonl"
        )
    return fmt


def _require(columns, path: Path, id_col: str, targets: tuple) -> None:
    """UserError when the id or a target column is absent, listing the columns found."""
    found = (
        ", ".join(str(c) if str(c).isprintable() else repr(str(c)) for c in columns) or "none"
    )  # one line, whatever the names hold
    if id_col not in columns:
        raise UserError(
            f"label file '{path}' has no id column '{id_col}' (columns: {found}): add it or pass --id-col NAME"
        )
    for t in targets:
        if t not in columns:
            raise UserError(
                f"label file '{path}' has no column '{t}' (columns: {found}): add it or pass --target NAME"
            )


def _read_csv(path: Path, id_col: str, targets: tuple) -> _Raw:
    """CSV read as text (no type guessing), formula guards undone, fully blank rows dropped.

    A file whose header splits on ';' (not ',') into the id column is read with ';' separators and
    decimal commas, as spreadsheets in locales that write 3,5 for 3.5 save it.
    """
    semicolon = _semicolon_header(path, id_col)
    df = _csv_frame(path, ";" if semicolon else ",").fillna("")
    _require(list(df.columns), path, id_col, targets)
    keep = (df != "").any(axis=1).to_numpy()
    lines = np.flatnonzero(keep) + 2  # line 1 is the header
    cols = [[_csv_cell(v) for v in df[c].to_numpy()[keep]] for c in (id_col, *targets)]
    return _Raw(cols[0], cols[1:], lambda i: f"line {lines[i]}", decimal_comma=semicolon)


def _semicolon_header(path: Path, id_col: str) -> bool:
    """Whether the header names the id column only when split on ';'."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    cells = lambda sep: [c.strip().strip('"') for c in next(csv.reader([line], delimiter=sep), [])]
    return id_col not in cells(",") and id_col in cells(";")


def _csv_frame(path: Path, sep: str) -> pd.DataFrame:
    """The CSV as text cells; a row with more cells than the header is an error (pandas would silently
    take its first cell as an index: '1,3,5' under 'id,price' would read as id 3, price 5)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(
                path,
                sep=sep,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                encoding="utf-8-sig",
                index_col=False,
            )
    except pd.errors.ParserWarning:
        raise UserError(
            f"label file '{path}' is not a readable CSV file (a row has more cells than the header): if its numbers have "
            "decimal commas (3,5), save it with ';' as the separator; else fix those rows or re-export it as CSV"
        ) from None
    except pd.errors.EmptyDataError:
        raise UserError(
            f"label file '{path}' is empty: fill in some labels, or check you sent the right file"
        ) from None
    except pd.errors.ParserError as e:
        if "Expected" in str(e) and sep == ",":
            reason = (str(e).strip().splitlines() or ["ParserError"])[-1]
            raise UserError(
                f"label file '{path}' is not a readable CSV file ({reason}; a row has more cells than the header): if its numbers "
                "have decimal commas, save it with ';' as the separator; else fix those rows or re-export it as CSV"
            ) from None
        raise _corrupt(path, "CSV", e) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, "CSV", e) from None


_DECIMAL_COMMA = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d+),\d+")


def _from_decimal_comma(v):
    """'3,5' -> '3.5' and '1.234,5' -> '1234.5' (a ';'-separated file's numbers); other cells as they are."""
    if isinstance(v, str) and _DECIMAL_COMMA.fullmatch(v.strip()):
        return v.strip().replace(".", "").replace(",", ".")
    return v


def _csv_cell(v: str) -> str:
    return unguard_formula(v).strip()


def _read_parquet(path: Path, id_col: str, targets: tuple) -> _Raw:
    try:
        with pq.ParquetFile(path) as pf:
            _require(pf.schema_arrow.names, path, id_col, targets)
            table = pf.read(columns=[id_col, *targets])
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _corrupt(path, "Parquet", e) from None
    cols = [table.column(c).to_pylist() for c in (id_col, *targets)]
    return _Raw(cols[0], cols[1:], lambda i: f"row {i + 1}")


def _read_jsonl(path: Path, id_col: str, targets: tuple) -> _Raw:
    """One JSON object per line; blank lines skipped; a key absent from a line is a blank cell."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _corrupt(path, "JSON-lines", e) from None
    records, lines = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            records.append(_json_record(line, lineno, path))
            lines.append(lineno)
    columns = list(dict.fromkeys(k for r in records for k in r))
    if records:
        _require(columns, path, id_col, targets)
    cols = [[r.get(c) for r in records] for c in (id_col, *targets)]
    return _Raw(cols[0], cols[1:], lambda i: f"line {lines[i]}")


def _json_record(line: str, lineno: int, path: Path) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(
            f"label file '{path}' has bad JSON on line {lineno} ({e.msg}): fix or delete that line"
        ) from None
    if not isinstance(rec, dict):
        raise UserError(
            f"label file '{path}' line {lineno} is not a JSON object: write one {{\"id\": ..., ...}} object per line"
        )
    return rec


_READERS = {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}


def _corrupt(path: Path, kind: str, err: Exception) -> UserError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    return UserError(
        f"label file '{path}' is not a readable {kind} file ({reason}): re-export it as {kind}"
    )


def build_label_file(
    ids: list,
    target_cells: list[list],
    where: Callable[[int], str],
    path,
    targets,
    id_kind: str,
    task: str,
) -> LabelFile:
    """A LabelFile from cells read by another reader (Label Studio exports): the same parsing and checks."""
    return _build(
        _Raw(list(ids), [list(c) for c in target_cells], where),
        Path(path),
        tuple(targets),
        id_kind,
        task,
    )


def _build(raw: _Raw, path: Path, targets: tuple, id_kind: str, task: str) -> LabelFile:
    """Turn raw cells into a LabelFile: ids parsed and unique, targets parsed or blank."""
    if raw.decimal_comma and task != "classification":
        raw.targets = [[_from_decimal_comma(v) for v in col] for col in raw.targets]
    ids = [_parse_id(v, id_kind, path, raw.where(i)) for i, v in enumerate(raw.ids)]
    _check_unique(ids, raw, path)
    kept, values, blank = [], [], []
    for i, id_ in enumerate(ids):
        cells = [col[i] for col in raw.targets]
        row = _parse_row(cells, targets, id_, path, task)
        if row is None:
            blank.append(id_)
        else:
            kept.append(id_)
            values.append(row)
    id_dtype = np.int64 if id_kind == "int" else object
    if task == "classification":
        vals = np.array([v[0] for v in values], dtype=object)
    else:
        vals = np.array(values, dtype=np.float64).reshape(len(values), len(targets))
    return LabelFile(np.array(kept, dtype=id_dtype), vals, np.array(blank, dtype=id_dtype))


def _is_blank(v, task: str) -> bool:
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    return task == "classification" and isinstance(v, float) and math.isnan(v)


def parse_id(v, id_kind: str, path, where: str):
    """An id of the pool's kind (as label files are read), or a UserError naming the fix."""
    return _parse_id(v, id_kind, Path(path), where)


def _parse_id(v, id_kind: str, path: Path, where: str):
    """An id of the pool's kind; ints also accept integral floats like 3.0 (spreadsheets make those)."""
    if _is_blank(v, "classification"):
        raise UserError(
            f"label file '{path}' has a row with no id ({where}): fill in the id or delete the row"
        )
    parsed = _as_int(v) if id_kind == "int" else _as_str(v)
    if parsed is None:
        kind = "integers" if id_kind == "int" else "strings"
        raise UserError(
            f"label file '{path}' has id {v!r} ({where}) but the pool's ids are {kind}: fix the id column or pass --id-col NAME"
        )
    return parsed


def _as_int(v):
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, str):
        if _INT.fullmatch(v.strip()):
            return int(v)
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    return None


def _as_str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return str(int(v))
    return None


def _check_unique(ids: list, raw: _Raw, path: Path) -> None:
    first: dict = {}
    for i, id_ in enumerate(ids):
        if id_ in first:
            raise UserError(
                f"label file '{path}' has id {id_} twice ({raw.where(first[id_])} and {raw.where(i)}): keep one row per id"
            )
        first[id_] = i


def _parse_row(cells: list, targets: tuple, id_, path: Path, task: str):
    """The row's parsed targets, or None when every target cell is blank."""
    blank = [_is_blank(v, task) for v in cells]
    if all(blank):
        return None
    if any(blank):
        name = targets[blank.index(True)]
        raise UserError(
            f"label file '{path}' fills only some targets for id {id_} ('{name}' is blank): fill every target or leave them all blank"
        )
    if task == "classification":
        return [class_label(cells[0])]
    return [_parse_number(v, t, id_, path) for v, t in zip(cells, targets)]


MAX_TARGET = 1e30  # training runs in float32; squares of larger values overflow


def parse_number(v, target: str, id_, path) -> float:
    """A finite target value within ±1e30, or a UserError naming the fix."""
    return _parse_number(v, target, id_, Path(path))


def _parse_number(v, target: str, id_, path: Path) -> float:
    x = None
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            pass
    elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    ):
        x = float(v)
    if x is None and isinstance(v, str) and _DECIMAL_COMMA.fullmatch(v.strip()) and "," in v:
        raise UserError(
            f"label file '{path}' has {v!r} in '{target}' for id {id_}, a decimal comma in a ','-separated file: "
            f"write {_from_decimal_comma(v)}, or save the CSV with ';' as the separator"
        )
    if x is None:
        raise UserError(
            f"label file '{path}' has a non-numeric value {v!r} in '{target}' for id {id_}: write a number or leave the cell blank"
        )
    if not math.isfinite(x):
        raise UserError(
            f"label file '{path}' has a non-finite value {v!r} in '{target}' for id {id_}: write a finite number or leave the cell blank"
        )
    if abs(x) > MAX_TARGET:
        raise UserError(
            f"label file '{path}' has a value {v!r} in '{target}' for id {id_} beyond ±1e30, too large to train on: rescale the target"
        )
    return x


def class_label(v) -> str:
    """A class as a string, the same whatever the file type: 1, 1.0 and "1.0" all give "1"."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str):
        m = _INTEGRAL_DECIMAL.fullmatch(v.strip())
        return str(int(m.group(1))) if m else v
    return str(v)


def validate_ingest(
    new: LabelFile,
    labeled: dict,
    outstanding: set,
    pool_ids_check: Callable,
    allow_unqueried: bool,
    overwrite: bool,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decide which labels of ``new`` to add, given what is labeled and what is outstanding.

    Never-queried ids are checked first with ``pool_ids_check`` (called once with those ids; it must
    raise if some are not in the pool), then refused unless ``allow_unqueried``; a label that differs from
    the stored one is refused unless ``overwrite``; an identical one is skipped with a note.
    Returns (ids to add, their values, notes for the user).
    """
    norm = int if new.ids.dtype.kind in "iu" else str
    labeled = {norm(k): v for k, v in labeled.items()}
    outstanding = {norm(k) for k in outstanding}
    add, same, changed, unqueried = [], [], [], []
    for i, raw_id in enumerate(new.ids):
        id_ = norm(raw_id)
        if id_ in labeled:
            (same if _same(labeled[id_], new.values[i]) else changed).append(i)
            continue
        if id_ not in outstanding:
            unqueried.append(i)
        add.append(i)
    if (
        unqueried
    ):  # first, so that an id not in the pool is not answered with "pass --allow-unqueried"
        pool_ids_check(new.ids[unqueried])
    _refuse_unqueried(new, unqueried, allow_unqueried)
    _refuse_changed(new, changed, labeled, norm, overwrite)
    rows = sorted(add + changed)
    notes = _notes(new, same, changed, labeled, norm, unqueried, outstanding)
    return new.ids[rows], new.values[rows], notes


def _refuse_unqueried(new: LabelFile, unqueried: list, allow: bool) -> None:
    if unqueried and not allow:
        more = f" (nor were {len(unqueried) - 1} more)" if len(unqueried) > 1 else ""
        raise UserError(
            f"id {new.ids[unqueried[0]]} was never queried{more}: pass --allow-unqueried to accept labels you chose yourself"
        )


def _refuse_changed(new: LabelFile, changed: list, labeled: dict, norm, overwrite: bool) -> None:
    if changed and not overwrite:
        i = changed[0]
        more = f" ({len(changed) - 1} more ids differ too)" if len(changed) > 1 else ""
        raise UserError(
            f"id {new.ids[i]} is already labeled {_fmt(labeled[norm(new.ids[i])])}, the file says "
            f"{_fmt(new.values[i])}{more}: pass --overwrite to replace it"
        )


def _notes(new, same, changed, labeled, norm, unqueried, outstanding) -> list[str]:
    notes = []
    if same:
        notes.append(
            f"skipped {len(same)} already labeled with the same value (e.g. id {_examples(new.ids[same])})"
        )
    if changed:
        i = changed[0]
        notes.append(
            f"replaced {len(changed)} existing labels (e.g. id {new.ids[i]}: "
            f"{_fmt(labeled[norm(new.ids[i])])} -> {_fmt(new.values[i])})"
        )
    if unqueried:
        notes.append(f"accepted {len(unqueried)} labels for ids that were never queried")
    n_blank = sum(norm(b) in outstanding for b in new.blank_ids)
    if n_blank:
        notes.append(f"{n_blank} ids left blank stay outstanding")
    return notes


def _examples(ids, k: int = 3) -> str:
    return ", ".join(str(i) for i in ids[:k]) + (", ..." if len(ids) > k else "")


def _same(a, b) -> bool:
    """Exact equality of a stored label and a new one (strings, or numbers/number rows)."""
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    return np.array_equal(
        np.ravel(np.asarray(a, dtype=float)), np.ravel(np.asarray(b, dtype=float))
    )


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    flat = [float(x) for x in np.ravel(np.asarray(v, dtype=float))]
    return repr(flat[0]) if len(flat) == 1 else "[" + ", ".join(repr(x) for x in flat) + "]"
