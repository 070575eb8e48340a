"""CSV as spreadsheets save it in locales that write 3,5 for 3.5: ';' separators and decimal commas are
read correctly; a decimal comma in a ','-separated file is refused with a line naming the fix."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import assert_user_error, digest, invoke

from alloop.errors import UserError
from alloop.io.labels import read_label_file


def test_semicolons_and_decimal_commas_are_read(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(
        "id;price;note\n1;3,5;a\n2;1.234,5;b\n3;;c\n4;7;d\n5;-0,25;e\n6;2.5;f\n", encoding="utf-8"
    )
    lf = read_label_file(p, "id", ("price",), "int")
    assert lf.ids.tolist() == [1, 2, 4, 5, 6] and lf.blank_ids.tolist() == [3]
    assert lf.values[:, 0].tolist() == [3.5, 1234.5, 7.0, -0.25, 2.5]


def test_semicolon_classification_labels_are_kept_as_written(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("id;label\n1;3,5\n2;red\n", encoding="utf-8")
    lf = read_label_file(p, "id", ("label",), "int", task="classification")
    assert lf.values.tolist() == ["3,5", "red"]


def test_a_decimal_comma_in_a_comma_file_is_refused_with_the_fix(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text('id,price\n1,"3,5"\n', encoding="utf-8")
    with pytest.raises(
        UserError, match=r"decimal comma.*write 3\.5, or save the CSV with ';' as the separator"
    ):
        read_label_file(p, "id", ("price",), "int")
    p.write_text(
        "id,price\n1,3,5\n2,4\n", encoding="utf-8"
    )  # unquoted: pandas alone would read id 3, price 5
    with pytest.raises(UserError, match=r"more cells than the header.*';' as the separator"):
        read_label_file(p, "id", ("price",), "int")


def test_ingest_of_a_spreadsheet_csv(run, runs, tmp_path):
    state = json.loads((run / "state.json").read_text())
    ids = sorted(int(i) for i in state["outstanding"])
    p = tmp_path / "filled.csv"
    p.write_text(
        "id;target\n" + "".join(f"{i};{k},5\n" for k, i in enumerate(ids)), encoding="utf-8"
    )
    res = invoke(["ingest", "r", p, "--no-train", "--json"], runs)
    assert res.code == 0, res.stderr
    state = json.loads((run / "state.json").read_text())
    labels = pd.read_parquet(run / state["labels_file"]).set_index("id")
    assert [labels.loc[i, "target"] for i in ids] == [k + 0.5 for k in range(len(ids))]


def test_ingest_refuses_a_decimal_comma_in_a_comma_file(run, runs, tmp_path):
    state = json.loads((run / "state.json").read_text())
    i = sorted(state["outstanding"])[0]
    p = tmp_path / "filled.csv"
    p.write_text(f'id,target\n{i},"2,5"\n', encoding="utf-8")
    before = digest(run)
    assert_user_error(invoke(["ingest", "r", p], runs), "decimal comma", "write 2.5")
    assert digest(run) == before
