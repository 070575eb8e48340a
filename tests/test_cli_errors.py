"""Every bad input: exit code 2, one line on stderr naming the problem and a fix, no traceback,
and not one byte of the run changed.

Most cases run in-process through typer's CliRunner (the same error handling as the installed
command, see ``cli._Commands``); a few run the installed command in a subprocess to prove it.
"""

from __future__ import annotations

import json
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import FAST, assert_user_error, digest, invoke, run_alloop


def refused(run, runs, args, *needles) -> str:
    """Run ``args`` on ``run``; assert a one-line user error and that no file of the run changed."""
    before = digest(run)
    line = assert_user_error(invoke(args, runs), *needles)
    assert digest(run) == before, "a refused command changed the run's files"
    return line


def labels_file(path, rows, header="id,target"):
    path.write_text(header + "\n" + "".join(f"{r}\n" for r in rows))
    return path


def state_ids(run):
    """Labeled ids, outstanding ids and an unlabeled, never-queried pool id of ``run``."""
    state = json.loads((run / "state.json").read_text())
    labeled = pd.read_parquet(run / state["labels_file"])["id"].tolist()
    outstanding = [int(i) for i in state["outstanding"]]
    fresh = next(i for i in range(1000, 2000) if i not in labeled and i not in outstanding)
    return labeled, outstanding, fresh


# --- unknown runs and init ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["query", "nosuch"],
        ["train", "nosuch"],
        ["status", "nosuch"],
        ["verify", "nosuch"],
        ["ingest", "nosuch", "x.csv"],
    ],
)
def test_unknown_run(runs, args):
    assert_user_error(invoke(args, runs), "no run named 'nosuch'", "alloop init nosuch --pool")
    assert list(runs.iterdir()) == []


def test_init_refuses_an_existing_run(run, runs, alloop_data):
    refused(
        run,
        runs,
        ["init", "r", "--pool", alloop_data.pool],
        "run 'r' already exists",
        "pick another name",
    )


@pytest.fixture
def bad_pools(tmp_path, alloop_data):
    """A garbage Parquet file, one cut in half, and a CSV passed as a pool."""
    good = alloop_data.pool.read_bytes()
    (tmp_path / "garbage.parquet").write_bytes(b"\x00\x01 not parquet at all " * 20)
    (tmp_path / "half.parquet").write_bytes(good[: len(good) // 2])
    (tmp_path / "pool.csv").write_text("id,x0\n1,2\n")
    return tmp_path


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--pool", "missing.parquet"], ["pool 'missing.parquet' not found", "--pool"]),
        (["--pool", "{bad}/garbage.parquet"], ["not a readable Parquet file", "replace it"]),
        (["--pool", "{bad}/half.parquet"], ["not a readable Parquet file"]),
        (["--pool", "{bad}/pool.csv"], ["not a readable Parquet file"]),
        (["--pool", "{pool}", "--id-col", "key"], ["no id column 'key'", "--id-col"]),
        (["--pool", "{pool}", "--features", "x0,x9"], ["no feature column 'x9'", "--features"]),
        (
            ["--pool", "{pool}", "--features", "x0,region"],
            ["feature 'region'", "not a number", "--features"],
        ),
        (
            ["--pool", "{pool}", "--features", "x0,target"],
            ["'target' cannot be both a feature and the id or a target"],
        ),
        (["--pool", "{pool}", "--s", "-1"], ["--s must be a positive number"]),
        (["--pool", "{pool}", "--s", "0"], ["--s must be a positive number"]),
        (["--pool", "{pool}", "--s", "nan"], ["--s must be a positive number"]),
        (["--pool", "{pool}", "--s", "inf"], ["--s must be a positive number"]),
        (["--pool", "{pool}", "--s", "abc"], ["--s"]),
        (
            ["--pool", "{pool}", "--model", "forest"],
            ["unknown --model 'forest'", "linear, poly, mlp or auto"],
        ),
        (["--pool", "{pool}", "--min-steps", "-1"], ["--min-steps must be 0 or more"]),
        (
            ["--pool", "{pool}", "--model", "mlp", "--hidden", "a,b"],
            ["--hidden takes comma-separated integers", "--hidden 64,64"],
        ),
        (
            ["--pool", "{pool}", "--model", "mlp", "--hidden", "8,0"],
            ["--hidden sizes must be at least 1"],
        ),
        (
            ["--pool", "{pool}", "--model", "mlp", "--activation", "swish"],
            ["unknown --activation 'swish'", "tanh"],
        ),
        (["--pool", "{pool}", "--model", "poly", "--degree", "0"], ["--degree must be at least 1"]),
        (
            ["--pool", "{pool}", "--curvature", "fisher"],
            ["unknown --curvature 'fisher'", "hessian or gauss-newton"],
        ),
        (
            ["--pool", "{pool}", "--target", "round"],
            ["target column 'round' clashes with a column alloop writes"],
        ),
        (["--pool", "{pool}", "--labels", "{bad}/missing.csv"], ["label file", "not found"]),
        (
            ["--pool", "{pool}", "--test", "{bad}/garbage.parquet"],
            ["cannot read", "garbage.parquet"],
        ),
    ],
)
def test_init_bad_input_creates_nothing(runs, alloop_data, bad_pools, extra, needles):
    args = [a.format(bad=bad_pools, pool=alloop_data.pool) for a in extra]
    assert_user_error(invoke(["init", "new", *args], runs), *needles)
    assert list(runs.iterdir()) == []


def test_init_onto_an_existing_file(runs, alloop_data, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert_user_error(
        invoke(["init", str(target), "--pool", alloop_data.pool], runs),
        "is a file, not a run directory",
    )
    assert target.read_text() == "keep me"


def test_init_seed_labels_are_checked(runs, alloop_data, tmp_path):
    seeds = {
        "unknown.csv": (["99999,1.0"], "id 99999 is not in the pool"),
        "dup.csv": (["1000,1.0", "1000,1.0"], "has id 1000 twice"),
        "nan.csv": (["1000,nan"], "non-finite value 'nan'"),
    }
    for name, (rows, needle) in seeds.items():
        f = labels_file(tmp_path / name, rows)
        assert_user_error(
            invoke(["init", "new", "--pool", alloop_data.pool, "--labels", f], runs), needle
        )
    assert list(runs.iterdir()) == []


# --- query -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["--strategy", "best"],
            ["unknown --strategy 'best'", "sld, sld-topk, random, committee, greedy"],
        ),
        (["--format", "xlsx"], ["unknown --format 'xlsx'", "csv, parquet, jsonl or labelstudio"]),
        (["-k", "0"], ["-k must be at least 1"]),
        (["-k", "-3"], ["-k must be at least 1"]),
        (["-k", "abc"], ["Invalid value for '-k'", "alloop query --help"]),
    ],
)
def test_query_bad_options(run, runs, args, needles):
    refused(run, runs, ["query", "r", *args], *needles)


def test_train_with_no_labels(runs, alloop_data):
    assert invoke(["init", "cold", "--pool", alloop_data.pool, *FAST], runs).code == 0
    refused(
        runs / "cold",
        runs,
        ["train", "cold"],
        "has no labels yet",
        "alloop query cold",
        "alloop ingest cold",
    )


def test_train_bad_epochs(run, runs):
    refused(run, runs, ["train", "r", "--epochs", "0"], "--epochs must be at least 1")


# --- ingest: the labels themselves -------------------------------------------------------------


def test_ids_not_in_the_pool(run, runs, tmp_path):
    f = labels_file(tmp_path / "l.csv", ["99999,1.5", "99998,2.5"])
    line = refused(
        run,
        runs,
        ["ingest", "r", f],
        "2 ids are not in the pool",
        "99999",
        "check the file's id column",
    )
    assert "--allow-unqueried" not in line  # that flag would not help
    refused(run, runs, ["ingest", "r", f, "--allow-unqueried"], "not in the pool")


def test_never_queried_ids_need_the_flag(run, runs, tmp_path):
    _, _, fresh = state_ids(run)
    f = labels_file(tmp_path / "l.csv", [f"{fresh},0.5"])
    refused(run, runs, ["ingest", "r", f], f"id {fresh} was never queried", "--allow-unqueried")
    res = invoke(["ingest", "r", f, "--allow-unqueried", "--no-train", "--json"], runs)
    assert res.code == 0, res.stderr
    assert res.json()["added"] == 1 and "never queried" in res.stderr


def test_duplicate_ids(run, runs, tmp_path):
    _, outstanding, _ = state_ids(run)
    f = labels_file(
        tmp_path / "l.csv",
        [f"{outstanding[0]},1.0", f"{outstanding[1]},2.0", f"{outstanding[0]},1.0"],
    )
    refused(
        run,
        runs,
        ["ingest", "r", f],
        f"has id {outstanding[0]} twice",
        "line 2 and line 4",
        "keep one row per id",
    )


def test_relabeling_needs_overwrite(run, runs, tmp_path, alloop_data):
    labeled, _, _ = state_ids(run)
    old = alloop_data.truth[labeled[0]]
    f = labels_file(tmp_path / "l.csv", [f"{labeled[0]},{old + 1}"])
    refused(run, runs, ["ingest", "r", f], f"id {labeled[0]} is already labeled", "--overwrite")
    res = invoke(["ingest", "r", f, "--overwrite", "--no-train", "--json"], runs)
    assert res.code == 0 and res.json()["added"] == 1 and "replaced 1 existing labels" in res.stderr
    stored = pd.read_parquet(run / json.loads((run / "state.json").read_text())["labels_file"])
    assert stored.set_index("id").loc[labeled[0], "target"] == pytest.approx(old + 1)
    assert len(stored) == len(labeled)


def test_same_label_again_is_a_note_not_an_error(run, runs, tmp_path, alloop_data):
    labeled, _, _ = state_ids(run)
    f = labels_file(tmp_path / "l.csv", [f"{labeled[0]},{float(alloop_data.truth[labeled[0]])!r}"])
    before = digest(run)
    res = invoke(["ingest", "r", f], runs)
    assert res.code == 0 and "skipped 1 already labeled" in res.stderr
    assert digest(run) == before


@pytest.mark.parametrize(
    "value, needle",
    [
        ("nan", "non-finite value 'nan'"),
        ("inf", "non-finite value 'inf'"),
        ("-inf", "non-finite"),
        ("abc", "non-numeric value 'abc'"),
        ("1.5.2", "non-numeric value '1.5.2'"),
    ],
)
def test_bad_target_values(run, runs, tmp_path, value, needle):
    _, outstanding, _ = state_ids(run)
    f = labels_file(tmp_path / "l.csv", [f"{outstanding[0]},1.0", f"{outstanding[1]},{value}"])
    refused(run, runs, ["ingest", "r", f], needle, f"for id {outstanding[1]}", "write a")


def test_bad_target_in_jsonl_and_parquet(run, runs, tmp_path):
    _, outstanding, _ = state_ids(run)
    j = tmp_path / "l.jsonl"
    j.write_text(f'{{"id": {outstanding[0]}, "target": NaN}}\n')
    refused(run, runs, ["ingest", "r", j], "non-finite value nan")
    p = tmp_path / "l.parquet"
    pq.write_table(pa.table({"id": [outstanding[0]], "target": ["twelve"]}), p)
    refused(run, runs, ["ingest", "r", p], "non-numeric value 'twelve'")


# --- ingest: the file itself -------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path, run):
    """Broken label files of every kind, keyed by what is wrong with them."""
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": list(range(1000, 1200)), "target": [1.0] * 200}), good)
    data = good.read_bytes()
    files = {
        "empty.csv": b"",
        "empty.parquet": b"",
        "empty.jsonl": b"",
        "header-only.csv": b"id,target\n",
        "half.parquet": data[: len(data) // 2],
        "garbage.parquet": b"PAR1 garbage \x00\xff" * 30,
        "binary.csv": b"\xff\xfe\x00\x81\x00garbage",
        "ragged.csv": b"id,target\n1000,1.0\n1001,2.0,3,4,5\n",
        "prose.csv": b"Dear labeler,\nplease find the labels attached.\n",
        "bad.jsonl": b'{"id": 1000, "target": 1.0}\n{"id": 1001, "target": \n',
        "labels.xlsx": b"PK\x03\x04",
        "no-target.csv": b"id,price\n1000,1.0\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize(
    "name, needles",
    [
        ("empty.csv", ["is empty"]),
        ("empty.jsonl", ["has no rows"]),
        ("header-only.csv", ["has no rows"]),
        ("empty.parquet", ["not a readable Parquet file", "re-export"]),
        ("half.parquet", ["not a readable Parquet file"]),
        ("garbage.parquet", ["not a readable Parquet file"]),
        ("binary.csv", ["not a readable CSV file", "re-export it as CSV"]),
        ("ragged.csv", ["not a readable CSV file"]),
        ("prose.csv", ["has no id column 'id'", "add it"]),
        ("bad.jsonl", ["bad JSON on line 2", "fix or delete that line"]),
        ("labels.xlsx", ["unknown extension '.xlsx'", ".csv, .parquet or .jsonl"]),
        ("no-target.csv", ["has no column 'target'", "--target"]),
        ("missing.csv", ["not found", "check the path"]),
    ],
)
def test_bad_label_files(run, runs, bad_files, name, needles):
    refused(run, runs, ["ingest", "r", bad_files / name], *needles)


# --- the pool changed or moved since init ------------------------------------------------------


@pytest.fixture
def own_pool_run(runs, tmp_path, alloop_data):
    """A run (no labels, no training) over a private copy of the pool, which the test may rewrite."""
    pool = tmp_path / "mine.parquet"
    pool.write_bytes(alloop_data.pool.read_bytes())
    assert (
        invoke(["init", "mine", "--pool", pool, "--labels", alloop_data.seed, *FAST], runs).code
        == 0
    )
    return runs / "mine", pool


@pytest.mark.parametrize("change", ["x1 as text", "x1 as float32", "x2 removed", "id as float"])
def test_pool_schema_changed_since_init(own_pool_run, runs, tmp_path, change):
    run, pool = own_pool_run
    table = pq.read_table(pool)
    col, what = change.split(" ", 1)
    i = table.schema.get_field_index(col)
    if what == "removed":
        table = table.remove_column(i)
    else:
        new_type = {"as text": pa.string(), "as float32": pa.float32(), "as float": pa.float64()}[
            what
        ]
        table = table.set_column(i, col, table.column(col).cast(new_type))
    pq.write_table(table, pool)
    (tmp_path / "l.csv").write_text("id,target\n1000,1.0\n")
    for args in (["query", "mine"], ["train", "mine"], ["ingest", "mine", tmp_path / "l.csv"]):
        refused(
            run,
            runs,
            args,
            "pool schema changed since `alloop init mine`",
            "restore the pool or init a new run",
        )


def test_pool_gone(own_pool_run, runs):
    run, pool = own_pool_run
    pool.unlink()
    refused(run, runs, ["query", "mine"], "the pool of run 'mine' is not at", "put it back")


# --- the installed command: the same errors from a real process --------------------------------


def test_installed_command_errors(run, runs, bad_files, alloop_data):
    """A handful of the cases above through the console script: one line, exit 2, run unchanged."""
    cwd = runs.parent
    before = digest(run)
    cases = [
        (["query", "nosuch"], "no run named 'nosuch'"),
        (["ingest", "r", bad_files / "half.parquet"], "not a readable Parquet file"),
        (["query", "r", "--format", "xlsx"], "unknown --format 'xlsx'"),
        (["init", "new", "--pool", "missing.parquet"], "pool 'missing.parquet' not found"),
    ]
    for args, needle in cases:
        assert_user_error(run_alloop(args, cwd, runs), needle)
    python_m = [sys.executable, "-m", "alloop"]
    assert_user_error(
        run_alloop(["query", "r", "-k", "x"], cwd, runs, command=python_m), "Invalid value for '-k'"
    )
    assert digest(run) == before
    assert not (runs / "new").exists()


# --- a damaged run -----------------------------------------------------------------------------


def _damage(run, what):
    state = json.loads((run / "state.json").read_text())
    if what == "checkpoint missing":
        (run / state["checkpoint"]).unlink()
    elif what == "checkpoint garbage":
        (run / state["checkpoint"]).write_bytes(b"garbage")
    elif what == "labels missing":
        (run / state["labels_file"]).unlink()
    elif what == "state garbage":
        (run / "state.json").write_text('{"generation": ')
    elif what == "test set missing":
        (run / "test.parquet").unlink()


@pytest.mark.parametrize(
    "what, command, needles",
    [
        (
            "checkpoint missing",
            "train",
            ["checkpoint checkpoints/", "is missing", "alloop verify r"],
        ),
        (
            "checkpoint garbage",
            "train",
            ["checkpoint checkpoints/", "is corrupt", "alloop verify r"],
        ),
        ("labels missing", "query", ["labels file labels/", "is missing", "alloop verify r"]),
        ("state garbage", "status", ["unreadable state.json", "restore it from a backup"]),
        (
            "test set missing",
            "train",
            ["test set test.parquet of run 'r' is missing", "alloop verify r"],
        ),
    ],
)
def test_damaged_run_is_refused_not_made_worse(run, runs, what, command, needles):
    _damage(run, what)
    refused(run, runs, [command, "r"], *needles)


def test_lost_checkpoint_is_recovered_by_fresh_training(run, runs):
    _damage(run, "checkpoint missing")
    assert invoke(["verify", "r"], runs).code == 1
    res = invoke(["train", "r", "--fresh", "--json"], runs)
    assert res.code == 0, res.stderr
    assert invoke(["verify", "r"], runs).code == 0


def test_ctrl_c_is_one_line_and_exit_130(run, runs, monkeypatch):
    from alloop.commands import query as query_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(query_module, "query", interrupted)
    before = digest(run)
    res = invoke(["query", "r"], runs)
    assert (
        res.code == 130
        and res.stderr.strip() == "interrupted: the run is at its last committed state"
    )
    assert digest(run) == before


def test_messages_are_printed_verbatim(run, runs, tmp_path):
    """A '[...]' in a path is text, not rich markup: the message names the file exactly."""
    f = tmp_path / "answers[bold]v2.xlsx"
    f.write_text("id,target\n")
    refused(run, runs, ["ingest", "r", f], "answers[bold]v2.xlsx", "unknown extension")
