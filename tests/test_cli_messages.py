"""What the command line says (#32): help texts shown whole, --version, errors naming fixes that
exist (ingest --id-col/--target), the same errors in the Python API's words, --json errors,
listing runs, and the next step after a query naming the real file."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from cli_helpers import assert_user_error, digest, invoke
from typer.main import get_command

import alloop
from alloop.cli import app


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


def _help_texts():
    """(command, option help) for every option of every command."""
    group = get_command(app)
    for name, command in group.commands.items():
        for p in command.params:
            if getattr(p, "help", None):
                yield name, p.help


def test_help_texts_keep_their_brackets(runs):
    """rich markup ate "[ray]" from `pip install 'alloop[ray]'`: every bracket must show."""
    checked = 0
    for name, text in _help_texts():
        for piece in re.findall(r"\[[^\]]*\]", text):
            shown = invoke([name, "--help"], runs).stdout
            assert piece in shown, f"`alloop {name} --help` lost {piece!r}"
            checked += 1
    assert checked, "no help text has brackets: the test checks nothing"
    shown = " ".join(invoke(["query", "--help"], runs).stdout.split())
    assert "pip install 'alloop[ray]'" in shown


def test_version(runs):
    res = ok(invoke(["--version"], runs))
    assert res.stdout.strip() == f"alloop {alloop.__version__}" and res.stderr == ""


def test_json_errors_are_json_too(runs):
    res = invoke(["status", "nosuch", "--json"], runs)
    assert res.code == 2 and "error:" in res.stderr
    assert "no run named 'nosuch'" in json.loads(res.stdout)["error"]


def test_a_mistyped_run_name_gets_did_you_mean(run, runs):
    assert_user_error(invoke(["status", "rr"], runs), "did you mean 'r'?", "alloop runs")


def test_runs_lists_the_runs(run, runs):
    res = ok(invoke(["runs", "--json"], runs)).json()
    assert [r["name"] for r in res["runs"]] == ["r"]
    assert (res["runs"][0]["labels"], res["runs"][0]["outstanding"]) == (6, 2)
    assert "r: regression, 6 labels, 2 outstanding, round 1" in invoke(["runs"], runs).stdout


# --- ingest: the file's own column names ---------------------------------------------------------


def _renamed(run, tmp_path, alloop_data):
    out = json.loads((run / "state.json").read_text())["outstanding"]
    ids = [int(i) for i in out]
    path = tmp_path / "theirs.csv"
    pd.DataFrame({"row": ids, "price": alloop_data.truth.loc[ids].to_numpy()}).to_csv(
        path, index=False
    )
    return path, ids


def test_ingest_reads_a_file_with_other_column_names(run, runs, tmp_path, alloop_data):
    path, ids = _renamed(run, tmp_path, alloop_data)
    line = assert_user_error(invoke(["ingest", "r", path], runs), "--id-col NAME")
    assert "no id column 'id'" in line
    args = ["ingest", "r", path, "--id-col", "row", "--target", "price", "--no-train", "--json"]
    res = ok(invoke(args, runs)).json()
    assert res["added"] == len(ids) and res["outstanding"] == 0


def test_ingest_target_must_name_one_column_per_target(run, runs, tmp_path, alloop_data):
    path, _ = _renamed(run, tmp_path, alloop_data)
    before = digest(run)
    args = ["ingest", "r", path, "--id-col", "row", "--target", "a,b"]
    assert_user_error(invoke(args, runs), "--target names 2 column(s)", "1 target(s)")
    assert digest(run) == before


def test_python_errors_speak_of_arguments_and_the_dataframe(run, runs, alloop_data):
    r = alloop.open_run("r")
    ids = [int(i) for i in json.loads((run / "state.json").read_text())["outstanding"]]
    frame = pd.DataFrame({"row": ids, "price": alloop_data.truth.loc[ids].to_numpy()})
    with pytest.raises(alloop.UserError) as e:
        r.ingest(frame, train=False)
    text = str(e.value)
    assert "the labels DataFrame" in text and "id_col='NAME'" in text
    assert "--" not in text and ".parquet" not in text, text
    with pytest.raises(alloop.UserError, match="k=10000 is more than"):
        r.query(k=10000)
    done = r.ingest(frame, train=False, id_col="row", target="price")
    assert done.added == len(ids)
    with pytest.raises(alloop.UserError, match=r"alloop\.init_run\('nope', pool\)"):
        alloop.open_run("nope")
    st = r.status()
    r.query(k=240 - st["labels"] - st["outstanding"], strategy="random")
    with pytest.raises(alloop.UserError, match=r"run\.withdraw\(rounds=N\) \(or everything=True\)"):
        r.query(k=1)


# --- small things --------------------------------------------------------------------------------


def test_the_next_step_after_a_query_names_the_real_file(run, runs):
    res = ok(invoke(["query", "r", "-k", "2"], runs))
    path = res.stdout.strip()
    assert f"`alloop ingest r {path}`" in res.stderr
    res = ok(invoke(["query", "r", "-k", "2", "--format", "labelstudio"], runs))
    assert "labelstudio.xml" in res.stderr and res.stdout.strip() in res.stderr
    assert "fill in the target column" not in res.stderr


def test_status_says_the_model_name_once():
    from alloop.cli import _model_now

    st = {"model_now": "poly 2", "model_choice": {"reason": "poly 2: lowest CV loss (...)"}}
    assert _model_now(st) == "poly 2 (lowest CV loss (...))"
    st["model_choice"]["reason"] = "kept poly 2: within 2%"
    assert _model_now(st) == "poly 2 (kept: within 2%)"


def test_poly_help_says_it_has_no_interaction_terms(runs):
    for command in ("init", "simulate"):
        shown = " ".join(ok(invoke([command, "--help"], runs)).stdout.split())
        assert "no interaction terms" in shown, command
