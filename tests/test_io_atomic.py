"""Atomic writes, deterministic table encodings, the CSV formula guard, hashes."""

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from alloop.io import atomic
from alloop.io.atomic import (
    encode_table,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_table_atomic,
    write_text_atomic,
)


def frame():
    return pd.DataFrame(
        {
            "id": np.array([3, 1, 2], dtype=np.int64),
            "name": ["=SUM(A1)", "plain", "-bad"],
            "obj": pd.Series(["@x", None, "+1"], dtype=object),
            "score": [-1.5, 0.25, np.nan],
            "neg": np.array([-3, -2, -1], dtype=np.int64),
        }
    )


def test_write_bytes_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    write_bytes_atomic(p, b"one")
    write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_failed_replace_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_bytes_atomic(p, b"new")
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_temp_file_is_hidden_in_same_dir(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (seen.append(s), real(s, d)))
    write_bytes_atomic(tmp_path / "x", b"1")
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert os.path.basename(seen[0]).startswith(".tmp-")


def test_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "x", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


def test_json_is_sorted_indented_with_newline_and_refuses_nan(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "a.json").read_text()
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "n.json", {"x": float("nan")})
    assert not (tmp_path / "n.json").exists()


def test_text_roundtrip_utf8(tmp_path):
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_tables_are_byte_identical_for_identical_input(tmp_path, fmt):
    a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    write_table_atomic(a, frame(), fmt)
    write_table_atomic(b, frame().copy(), fmt)
    assert a.read_bytes() == b.read_bytes()
    assert sha256_file(a) == sha256_bytes(encode_table(frame(), fmt))


def test_parquet_bytes_identical_across_processes():
    """No timestamps or per-process state leak into the Parquet bytes."""
    code = (
        "import numpy as np, pandas as pd, hashlib; from alloop.io.atomic import encode_table;"
        "df = pd.DataFrame({'id': np.arange(5), 'x': np.linspace(0, 1, 5), 's': list('abcde')});"
        "print(hashlib.sha256(encode_table(df, 'parquet')).hexdigest())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 1


def test_parquet_has_no_index_no_pandas_metadata_and_zstd(tmp_path):
    df = frame().set_index("id")
    write_table_atomic(tmp_path / "t.parquet", df.reset_index(), "parquet")
    pf = pq.ParquetFile(tmp_path / "t.parquet")
    assert pf.schema_arrow.names == ["id", "name", "obj", "score", "neg"]
    assert b"pandas" not in (pf.schema_arrow.metadata or {})
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    back = pq.read_table(tmp_path / "t.parquet").to_pandas()
    assert back["id"].tolist() == [3, 1, 2]
    assert np.isnan(back["score"][2])


def test_csv_guards_formula_text_but_not_numbers():
    text = encode_table(frame(), "csv").decode()
    lines = text.splitlines()
    assert lines[0] == "id,name,obj,score,neg"
    assert lines[1] == "3,'=SUM(A1),'@x,-1.5,-3"
    assert lines[2] == "1,plain,,0.25,-2"
    assert lines[3] == "2,'-bad,'+1,,-1"


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@A", "\tx", "\rx"])
def test_guard_and_unguard_roundtrip(cell):
    guarded = atomic.guard_formula(cell)
    assert guarded == "'" + cell
    assert atomic.unguard_formula(guarded) == cell


@pytest.mark.parametrize("cell", ["abc", "'quoted", "", "1=1"])
def test_guard_leaves_safe_text_alone(cell):
    assert atomic.guard_formula(cell) == cell
    assert atomic.unguard_formula(cell) == cell


def test_csv_is_lf_and_readable_back():
    df = pd.DataFrame({"id": [1, 2], "y": [0.1, 2.0]})
    data = encode_table(df, "csv")
    assert b"\r\n" not in data
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(data)), df)


def test_jsonl_rows_in_column_order_with_null_for_missing():
    lines = encode_table(frame(), "jsonl").decode().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert list(first) == ["id", "name", "obj", "score", "neg"]
    assert first == {"id": 3, "name": "=SUM(A1)", "obj": "@x", "score": -1.5, "neg": -3}
    assert json.loads(lines[1])["obj"] is None
    assert json.loads(lines[2])["score"] is None


def test_jsonl_keeps_full_float_precision():
    x = 0.1 + 0.2
    line = encode_table(pd.DataFrame({"x": [x]}), "jsonl").decode()
    assert json.loads(line)["x"] == x


def test_unknown_table_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown table format"):
        write_table_atomic(tmp_path / "x.xlsx", frame(), "xlsx")
    assert not list(tmp_path.iterdir())


def test_sha256_helpers_agree_with_hashlib(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "d").write_bytes(data)
    assert sha256_file(tmp_path / "d") == hashlib.sha256(data).hexdigest() == sha256_bytes(data)


def test_io_shell_never_imports_jax_typer_or_rich():
    code = (
        "import sys, alloop.io, alloop.io.pool, alloop.io.labels, alloop.io.rundir, alloop.io.checkpoint;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'typer', 'rich', 'optax'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
