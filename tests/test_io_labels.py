"""Label files: the three formats, every error a user can make, and the ingest decisions."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alloop.errors import UserError
from alloop.io.atomic import write_table_atomic
from alloop.io.labels import LabelFile, class_label, read_label_file, validate_ingest


def csv(tmp_path, text, name="l.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def jsonl(tmp_path, rows, name="l.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def parquet(tmp_path, table, name="l.parquet"):
    p = tmp_path / name
    pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), p)
    return p


def read(p, targets=("y",), id_kind="int", task="regression", id_col="id"):
    return read_label_file(p, id_col, targets, id_kind, task)


# --- reading -----------------------------------------------------------------------------------


def test_csv_regression_with_extra_columns_and_blanks(tmp_path):
    p = csv(tmp_path, "rank,id,score,y,x1\n1,17,0.9,3.5,0\n2,4,0.8,,1\n3,9,0.7,-2e-3,2\n")
    lf = read(p)
    assert lf.ids.dtype == np.int64 and lf.ids.tolist() == [17, 9]
    assert lf.values.dtype == np.float64 and lf.values.shape == (2, 1)
    assert lf.values[:, 0].tolist() == [3.5, -0.002]
    assert lf.blank_ids.tolist() == [4]


def test_same_labels_in_three_formats_read_the_same(tmp_path):
    df = pd.DataFrame({"id": [3, 1, 2], "y": [0.5, np.nan, -1.25], "note": ["a", "b", "c"]})
    got = []
    for fmt in ("csv", "parquet", "jsonl"):
        p = tmp_path / f"l.{fmt}"
        write_table_atomic(p, df, fmt)
        got.append(read(p))
    for lf in got:
        assert lf.ids.tolist() == [3, 2] and lf.values[:, 0].tolist() == [0.5, -1.25]
        assert lf.blank_ids.tolist() == [1]


@pytest.mark.parametrize("name", ["l.pq", "l.ndjson", "l.json-lines", "L.CSV"])
def test_other_extensions(tmp_path, name):
    df = pd.DataFrame({"id": [1], "y": [2.0]})
    fmt = {"pq": "parquet", "ndjson": "jsonl", "json-lines": "jsonl", "CSV": "csv"}[
        name.split(".", 1)[1]
    ]
    write_table_atomic(tmp_path / name, df, fmt)
    assert read(tmp_path / name).values.tolist() == [[2.0]]


def test_multi_target_regression(tmp_path):
    p = csv(tmp_path, "id,a,b\n1,1,2\n2,,\n3,5,6.5\n")
    lf = read(p, targets=("a", "b"))
    assert lf.values.tolist() == [[1.0, 2.0], [5.0, 6.5]] and lf.blank_ids.tolist() == [2]


def test_int_ids_accept_integral_floats_and_whitespace(tmp_path):
    lf = read(csv(tmp_path, "id,y\n3.0,1\n 4 ,2\n1e1,3\n"))
    assert lf.ids.tolist() == [3, 4, 10]
    lf = read(jsonl(tmp_path, [{"id": 5.0, "y": 1}]))
    assert lf.ids.tolist() == [5]


def test_str_ids_keep_text_and_int_ids_from_json_become_text(tmp_path):
    lf = read(csv(tmp_path, "id,y\n007,1\nabc,2\n"), id_kind="str")
    assert lf.ids.dtype == object and lf.ids.tolist() == ["007", "abc"]
    lf = read(jsonl(tmp_path, [{"id": 17, "y": 1}]), id_kind="str")
    assert lf.ids.tolist() == ["17"]


def test_csv_formula_guard_is_undone_on_read(tmp_path):
    df = pd.DataFrame({"id": ["=cmd", "-x", "plain"], "y": ["+a", "@b", "c"]})
    write_table_atomic(tmp_path / "q.csv", df, "csv")
    assert "'=cmd" in (tmp_path / "q.csv").read_text()
    lf = read(tmp_path / "q.csv", id_kind="str", task="classification")
    assert lf.ids.tolist() == ["=cmd", "-x", "plain"] and lf.values.tolist() == ["+a", "@b", "c"]


def test_csv_with_excel_bom_and_crlf(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes("\ufeffid,y\r\n1,2\r\n".encode("utf-8"))
    assert read(p).ids.tolist() == [1]


def test_fully_blank_csv_rows_are_ignored(tmp_path):
    lf = read(csv(tmp_path, "id,y,note\n1,2,\n,,\n2,,x\n"))
    assert lf.ids.tolist() == [1] and lf.blank_ids.tolist() == [2]


@pytest.mark.parametrize(
    "cells, expect",
    [
        ("1\n2\n1\n", ["1", "2", "1"]),
        ("1.0\n2.00\ncat\n", ["1", "2", "cat"]),
        ("01\n-3.0\n 7 \n", ["01", "-3", "7"]),
    ],
)
def test_classification_labels_as_consistent_strings_from_csv(tmp_path, cells, expect):
    ids = "".join(f"{i}," + c + "\n" for i, c in enumerate(cells.splitlines()))
    lf = read(csv(tmp_path, "id,label\n" + ids), targets=("label",), task="classification")
    assert lf.values.dtype == object and lf.values.shape == (3,) and lf.values.tolist() == expect


def test_classification_from_parquet_ints_and_floats_match_csv(tmp_path):
    ints = read(
        parquet(tmp_path, {"id": [1, 2], "c": [1, 0]}), targets=("c",), task="classification"
    )
    floats = read(
        parquet(tmp_path, {"id": [1, 2, 3], "c": [1.0, 0.0, None]}, "f.parquet"),
        targets=("c",),
        task="classification",
    )
    assert ints.values.tolist() == floats.values.tolist() == ["1", "0"]
    assert floats.blank_ids.tolist() == [3]
    assert class_label(np.int64(4)) == class_label(4.0) == class_label("4.0") == "4"
    assert class_label(2.5) == "2.5"


def test_parquet_nulls_are_blank_but_nan_is_an_error(tmp_path):
    t = pa.table({"id": [1, 2], "y": pa.array([1.0, None])})
    assert read(parquet(tmp_path, t)).blank_ids.tolist() == [2]
    t = pa.table({"id": [1, 2], "y": pa.array([1.0, float("nan")], from_pandas=False)})
    with pytest.raises(UserError, match="non-finite value nan in 'y' for id 2"):
        read(parquet(tmp_path, t))


def test_jsonl_missing_key_is_blank_and_blank_lines_skipped(tmp_path):
    lf = read(jsonl(tmp_path, [{"id": 1, "y": 2}, "", {"id": 2}, {"id": 3, "y": None}]))
    assert lf.ids.tolist() == [1] and lf.blank_ids.tolist() == [2, 3]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda d: d / "none.csv", {}, "label file '.*none.csv' not found: check the path"),
        (lambda d: d, {}, "is not a file"),
        (
            lambda d: csv(d, "id,y\n1,2\n", "l.xlsx"),
            {},
            r"unknown extension '.xlsx': save it as .csv, .parquet or .jsonl",
        ),
        (lambda d: csv(d, ""), {}, "is empty"),
        (lambda d: csv(d, "id,y\n"), {}, "has no rows"),
        (lambda d: jsonl(d, []), {}, "has no rows"),
        (
            lambda d: parquet(
                d, pa.table({"id": pa.array([], pa.int64()), "y": pa.array([], pa.float64())})
            ),
            {},
            "has no rows",
        ),
        (lambda d: csv(d, "id,y\n1,2\n3,4,5,6\n"), {}, "not a readable CSV file.*re-export"),
        (lambda d: csv(d, "id,y\n1,2\n", "l.parquet"), {}, "not a readable Parquet file"),
        (lambda d: jsonl(d, [{"id": 1, "y": 2}, '{"id": 2, "y": ']), {}, "bad JSON on line 2"),
        (lambda d: jsonl(d, ["[1, 2]"]), {}, "line 1 is not a JSON object"),
        (
            lambda d: csv(d, "key,y\n1,2\n"),
            {},
            r"no id column 'id' \(columns: key, y\): add it or pass --id-col NAME",
        ),
        (
            lambda d: csv(d, "id,score\n1,2\n"),
            {},
            r"has no column 'y' \(columns: id, score\): add it or pass --target NAME",
        ),
        (lambda d: parquet(d, {"id": [1], "z": [2.0]}), {}, "has no column 'y'"),
        (lambda d: jsonl(d, [{"id": 1, "z": 2}]), {}, "has no column 'y'"),
        (
            lambda d: csv(d, "id,y\n1,2\nabc,3\n"),
            {},
            r"has id 'abc' \(line 3\) but the pool's ids are integers",
        ),
        (lambda d: csv(d, "id,y\n1,2\n2.5,3\n"), {}, r"has id '2.5' \(line 3\)"),
        (lambda d: jsonl(d, [{"id": True, "y": 1}]), {}, "has id True"),
        (
            lambda d: jsonl(d, [{"id": 1.5, "y": 1}]),
            {"id_kind": "str"},
            "the pool's ids are strings",
        ),
        (
            lambda d: csv(d, "id,y\n1,2\n,3\n"),
            {},
            r"has a row with no id \(line 3\): fill in the id or delete the row",
        ),
        (
            lambda d: parquet(d, {"id": pa.array([1, None]), "y": [1.0, 2.0]}),
            {},
            r"row with no id \(row 2\)",
        ),
        (
            lambda d: csv(d, "id,y\n5,1\n6,2\n5,3\n"),
            {},
            r"has id 5 twice \(line 2 and line 4\): keep one row per id",
        ),
        (lambda d: csv(d, "id,y\n5,1\n6,\n6,3\n"), {}, "has id 6 twice"),
        (
            lambda d: csv(d, "id,y\n5,abc\n"),
            {},
            "non-numeric value 'abc' in 'y' for id 5: write a number",
        ),
        (
            lambda d: csv(d, 'id,y\n5,"3,2"\n'),
            {},
            "has '3,2' in 'y' for id 5, a decimal comma.*write 3.2, or save the CSV with ';'",
        ),
        (lambda d: jsonl(d, [{"id": 5, "y": True}]), {}, "non-numeric value True"),
        (lambda d: jsonl(d, [{"id": 5, "y": [1]}]), {}, "non-numeric value"),
        (lambda d: csv(d, "id,y\n5,nan\n"), {}, "non-finite value 'nan' in 'y' for id 5"),
        (lambda d: csv(d, "id,y\n5,-inf\n"), {}, "non-finite value '-inf'"),
        (lambda d: jsonl(d, ['{"id": 5, "y": Infinity}']), {}, "non-finite value inf"),
        (
            lambda d: csv(d, "id,a,b\n5,1,\n"),
            {"targets": ("a", "b")},
            "fills only some targets for id 5 \\('b' is blank\\): fill every target or leave them all blank",
        ),
    ],
)
def test_label_file_errors(tmp_path, make, kwargs, message):
    with pytest.raises(UserError, match=message):
        read(make(tmp_path), **kwargs)


def test_binary_garbage_csv_is_a_user_error(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="not a readable CSV file"):
        read(p)


def test_truncated_parquet_is_a_user_error(tmp_path):
    p = parquet(tmp_path, {"id": list(range(100)), "y": [1.0] * 100})
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(UserError, match="not a readable Parquet file"):
        read(p)


def test_messages_are_one_line(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(b"\xff\xfe\x00garbage\n\x00\x01")
    with pytest.raises(UserError) as e:
        read(p)
    assert "\n" not in str(e.value)


def test_classification_needs_one_target(tmp_path):
    with pytest.raises(ValueError):
        read(csv(tmp_path, "id,a,b\n1,x,y\n"), targets=("a", "b"), task="classification")


# --- ingest decisions --------------------------------------------------------------------------


def lf(ids, values, blank=()):
    ids = np.array(ids, dtype=np.int64)
    return LabelFile(
        ids, np.array(values, dtype=np.float64).reshape(len(ids), -1), np.array(blank, np.int64)
    )


def never_called(ids):
    raise AssertionError(f"pool check called with {ids}")


def test_outstanding_ids_are_added():
    ids, values, notes = validate_ingest(
        lf([1, 2], [0.5, 1.5]), {}, {1, 2, 3}, never_called, False, False
    )
    assert ids.tolist() == [1, 2] and values.tolist() == [[0.5], [1.5]] and notes == []


def test_same_value_is_skipped_with_note():
    ids, values, notes = validate_ingest(
        lf([1, 2], [0.5, 1.5]), {1: 0.5}, {2}, never_called, False, False
    )
    assert ids.tolist() == [2] and values.tolist() == [[1.5]]
    assert any("skipped 1 already labeled with the same value (e.g. id 1)" in n for n in notes)


def test_different_value_needs_overwrite():
    new = lf([5, 6], [4.1, 1.0])
    with pytest.raises(
        UserError,
        match=r"^id 5 is already labeled 3.2, the file says 4.1: pass --overwrite to replace it$",
    ):
        validate_ingest(new, {5: 3.2}, {6}, never_called, False, False)
    ids, values, notes = validate_ingest(new, {5: 3.2}, {6}, never_called, False, True)
    assert ids.tolist() == [5, 6] and values[:, 0].tolist() == [4.1, 1.0]
    assert any("replaced 1 existing labels (e.g. id 5: 3.2 -> 4.1)" in n for n in notes)


def test_unqueried_needs_flag_and_is_pool_checked():
    new = lf([1, 17, 18], [1, 2, 3])
    with pytest.raises(
        UserError, match=r"^id 17 was never queried \(nor were 1 more\): pass --allow-unqueried"
    ):
        validate_ingest(new, {}, {1}, lambda ids: None, False, False)
    checked = []
    ids, _, notes = validate_ingest(new, {}, {1}, lambda x: checked.append(x.tolist()), True, False)
    assert checked == [[17, 18]] and ids.tolist() == [1, 17, 18]
    assert any("2 labels for ids that were never queried" in n for n in notes)


def test_pool_check_failure_propagates():
    def check(ids):
        raise UserError("id 17 is not in the pool: check the file's id column")

    with pytest.raises(UserError, match="not in the pool"):
        validate_ingest(lf([17], [1]), {}, set(), check, True, False)
    with pytest.raises(
        UserError, match="not in the pool"
    ):  # not "pass --allow-unqueried", which would not help
        validate_ingest(lf([17], [1]), {}, set(), check, False, False)


def test_string_keys_from_state_match_int_ids_and_blank_note():
    new = lf([1, 2], [1.0, 2.0], blank=[3])
    ids, _, notes = validate_ingest(new, {"1": 1.0}, {"2", "3"}, never_called, False, False)
    assert ids.tolist() == [2]
    assert any("1 ids left blank stay outstanding" in n for n in notes)


def test_classification_and_multi_target_comparison():
    new = LabelFile(
        np.array(["a", "b"], dtype=object), np.array(["x", "y"], dtype=object), np.array([], object)
    )
    with pytest.raises(UserError, match="id b is already labeled z, the file says y"):
        validate_ingest(new, {"a": "x", "b": "z"}, set(), never_called, False, False)
    multi = lf([1], [[1.0, 2.0]])
    _, _, notes = validate_ingest(multi, {1: [1.0, 2.0]}, set(), never_called, False, False)
    assert notes and "skipped" in notes[0]
    with pytest.raises(
        UserError, match=r"already labeled \[1.0, 3.0\], the file says \[1.0, 2.0\]"
    ):
        validate_ingest(multi, {1: (1.0, 3.0)}, set(), never_called, False, False)
