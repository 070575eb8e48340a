"""``DIR/curves.csv`` and ``DIR/config.json``: finished curves appended whole (fsynced), read back
on resume (a partial last line dropped), and the settings they were made with, checked on every
rerun."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from alloop.errors import UserError
from alloop.io import atomic
from alloop.training import stopping

CURVE_COLUMNS = ("strategy", "rep", "n_labels", "metric", "seconds")
SIGNAL_COLUMNS = stopping.SIGNALS  # the stopping signals of each round (blank: none)
CURVES_FILE = "curves.csv"
CONFIG_FILE = "config.json"


def read_curves(path: Path, expected_n: list[int]) -> dict[tuple[str, int], list[dict]]:
    """Complete curves in ``path`` by (strategy, rep). Incomplete or malformed rows are dropped and
    the file is rewritten without them (a simulation killed mid-write leaves at most a partial
    line)."""
    if not path.exists():
        return {}
    text = path.read_text()
    groups: dict[tuple[str, int], list[dict]] = {}
    lines = text.splitlines(keepends=True)
    for line in lines[1:]:
        row = _parse_row(line)
        if row is not None:
            groups.setdefault((row["strategy"], row["rep"]), []).append(row)
    done = {
        key: rows for key, rows in groups.items() if [r["n_labels"] for r in rows] == expected_n
    }
    if (
        not lines
        or lines[0].strip() != ",".join(CURVE_COLUMNS + SIGNAL_COLUMNS)
        or sum(map(len, done.values())) != len(lines) - 1
    ):
        atomic.write_text_atomic(
            path, _encode_rows([r for rows in done.values() for r in rows], header=True)
        )
    return done


def _parse_row(line: str) -> dict | None:
    if not line.endswith("\n"):
        return None
    cells = next(csv.reader([line]), [])
    if len(cells) not in (
        len(CURVE_COLUMNS),
        len(CURVE_COLUMNS) + len(SIGNAL_COLUMNS),
    ):  # curves written before the signals lack them
        return None
    try:
        row = {
            "strategy": cells[0],
            "rep": int(cells[1]),
            "n_labels": int(cells[2]),
            "metric": float(cells[3]),
            "seconds": float(cells[4]),
        }
        for k, v in zip(SIGNAL_COLUMNS, cells[len(CURVE_COLUMNS) :]):
            row[k] = float(v) if v else None
        return row
    except ValueError:
        return None


def _encode_rows(rows: list[dict], header: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CURVE_COLUMNS + SIGNAL_COLUMNS)
    for r in rows:
        signals = ["" if r.get(k) is None else repr(float(r[k])) for k in SIGNAL_COLUMNS]
        w.writerow(
            [
                r["strategy"],
                r["rep"],
                r["n_labels"],
                repr(float(r["metric"])),
                f"{r['seconds']:.4f}",
                *signals,
            ]
        )
    return buf.getvalue()


def append_curve(path: Path, rows: list[dict]) -> None:
    """Append one finished curve in a single write, then fsync."""
    if not path.exists():
        atomic.write_text_atomic(path, _encode_rows([], header=True))
    with open(path, "a", encoding="utf-8") as f:
        f.write(_encode_rows(rows))
        f.flush()
        os.fsync(f.fileno())


def check_config(out: Path, config: dict) -> None:
    """Refuse to mix curves of different settings or data in one directory."""
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            raise UserError(
                f"{out} holds a simulation with other settings ({', '.join(diff)} differ): "
                "pass another --out, or delete that directory to start over"
            )
    else:
        atomic.write_json_atomic(path, config)
