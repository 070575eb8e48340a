"""Property tests: malformed label files and pools never crash alloop or touch a run.

Every generated input either is a valid table (then the command may succeed) or gets exit code 2
with one line on stderr, and the run's files stay byte-identical.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import FIRST_ID, digest, invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

cells = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "=1+1",
            "+1",
            "@x",
            "3.0",
            "0x10",
            "\u00e9\u4e2d",
            "1,5",
        ]
    ),
)
ids = st.one_of(st.integers(FIRST_ID - 5, FIRST_ID + 300), st.integers(-(2**40), 2**40), cells)
columns = st.sampled_from(["id", "target", "x0", "ID", "Target", "", "id ", "extra", "\u00e9"])


@st.composite
def records(draw):
    cols = draw(st.lists(columns, min_size=0, max_size=4))
    n = draw(st.integers(0, 6))
    return [{c: draw(ids if c == "id" else cells) for c in cols} for _ in range(n)]


def _csv_bytes(recs, draw_bytes: bytes) -> bytes:
    if not recs:
        return draw_bytes
    return pd.DataFrame(recs).to_csv(index=False).encode("utf-8")


@st.composite
def label_files(draw):
    """(file name, bytes) of a CSV, JSONL or Parquet label file that may be malformed in any way."""
    kind = draw(
        st.sampled_from(
            ["csv", "jsonl", "parquet", "garbage-csv", "truncated-parquet", "wrong-ext"]
        )
    )
    recs = draw(records())
    if kind == "csv":
        return "labels.csv", _csv_bytes(recs, draw(st.binary(max_size=64)))
    if kind == "garbage-csv":
        return "labels.csv", draw(st.binary(max_size=200))
    if kind == "jsonl":
        lines = [json.dumps(r, default=str) for r in recs] + draw(
            st.lists(st.text(max_size=20), max_size=2)
        )
        return "labels.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass")
    if kind == "wrong-ext":
        return "labels.xlsx", _csv_bytes(recs, b"")
    table = _parquet_table(recs)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    if kind == "truncated-parquet":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return "labels.parquet", data


def _parquet_table(recs) -> pa.Table:
    if not recs or not recs[0]:
        return pa.table({"id": pa.array([], pa.int64())})
    cols = {}
    for c in recs[0]:
        vals = [r.get(c) for r in recs]
        try:
            cols[c] = pa.array(vals)
        except (pa.ArrowException, OverflowError):
            cols[c] = pa.array([None if v is None else str(v) for v in vals])
    return pa.table(cols)


@SETTINGS
@given(f=label_files())
def test_any_label_file_is_accepted_or_refused_cleanly(prepared_run, f):
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        shutil.copytree(prepared_run, runs / "r")
        path = Path(tmp) / f[0]
        path.write_bytes(f[1])
        before = digest(runs / "r")
        res = invoke(["ingest", "r", path, "--no-train", "--allow-unqueried", "--overwrite"], runs)
        assert res.code in (0, 2), res.stderr
        assert "Traceback" not in res.stderr
        if res.code == 2:
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert digest(runs / "r") == before


pool_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-(10**6), 10**6)
)


@st.composite
def pools(draw):
    """A pool file that may have wrong types, duplicate or missing ids, NaN/inf, odd names, no rows, or not be Parquet."""
    kind = draw(st.sampled_from(["table", "table", "truncated", "not-parquet", "empty"]))
    if kind == "not-parquet":
        return draw(st.binary(max_size=300))
    n = 0 if kind == "empty" else draw(st.integers(1, 30))
    cols = {}
    id_kind = draw(st.sampled_from(["int", "str", "float", "dup", "missing", "null"]))
    if id_kind != "missing":
        base = list(range(n))
        vals = {
            "int": base,
            "str": [f"r{i}" for i in base],
            "float": [i + 0.5 for i in base],
            "dup": [i // 2 for i in base],
            "null": [None] + base[1:] if n else [],
        }[id_kind]
        cols["id"] = pa.array(vals)
    for name in draw(
        st.lists(
            st.sampled_from(["a", "b", "\u00e9t\u00e9", "target", "c d"]),
            min_size=0,
            max_size=3,
            unique=True,
        )
    ):
        vals = draw(st.lists(pool_values, min_size=n, max_size=n))
        if draw(st.booleans()):
            vals = [str(v) for v in vals]
        cols[name] = pa.array(
            vals,
            pa.float64()
            if not vals or not isinstance(vals[0], str) and any(isinstance(v, float) for v in vals)
            else None,
        )
    if not cols:
        cols["id"] = pa.array([], pa.int64())
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


@SETTINGS
@given(data=pools())
def test_any_pool_is_accepted_or_refused_cleanly(data):
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        pool = Path(tmp) / "pool.parquet"
        pool.write_bytes(data)
        res = invoke(["init", "r", "--pool", pool, "--min-steps", "10"], runs)
        assert res.code in (0, 2), res.stderr
        assert "Traceback" not in res.stderr
        if res.code == 2:
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert not (runs / "r").exists() and list(runs.iterdir()) == []
        else:
            df = pq.read_table(pool).to_pandas()
            assert df["id"].is_unique and df["id"].notna().all()


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "..", ".", "", "-rf", "a b"])
def test_run_names_cannot_escape_the_runs_directory(tmp_path, name):
    from alloop.errors import UserError
    from alloop.io.rundir import resolve_run_path

    runs = tmp_path / "runs"
    try:
        path = resolve_run_path(name)
    except UserError:
        return
    # a path-like name is the user's explicit path; a plain name must land inside the runs root
    if "/" not in name and not name.startswith("."):
        assert path.parent == runs.resolve() or path.parent.name == "runs"


def test_checkpoints_are_never_unpickled(prepared_run, tmp_path):
    """A checkpoint holding a pickled object array is refused, not executed."""
    from alloop.io.checkpoint import load_tree

    bad = tmp_path / "evil.npz"
    np.savez(bad, **{"params/w": np.array([object()], dtype=object)})
    from alloop.errors import UserError

    with pytest.raises(UserError):
        load_tree(bad, {"params": {"w": np.zeros(1)}})


def test_query_csv_cells_cannot_start_a_formula(tmp_path):
    from alloop.io.atomic import encode_table

    df = pd.DataFrame(
        {"id": ["=HYPERLINK(1)", "+1", "-2", "@x", "ok"], "v": [1.0, -2.0, 3.0, 4.0, 5.0]}
    )
    text = encode_table(df, "csv").decode()
    for line in text.splitlines()[1:]:
        assert line[0] not in "=+-@", line
    assert "-2.0" in text  # numbers are left alone
