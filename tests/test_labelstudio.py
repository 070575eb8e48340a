"""Label Studio without the server: the tasks file and labeling configuration `query --format labelstudio`
writes, and ingesting exports (JSON, JSON-MIN, CSV) built here the way Label Studio writes them: skipped
annotations, several annotators and --resolve, and every way an export can be refused (exit 2, one line,
the run's files unchanged). tests/labelstudio/ runs the same loop against a real server."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import FAST, FEATURES, assert_user_error, copy_run, digest, invoke

from alloop.io import labelstudio

WINE = Path(__file__).resolve().parents[1] / "datasets" / "wine"


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


# --- exports as Label Studio writes them ---------------------------------------------------------


def _annotation(n: int, target: str, value, kind: str = "number", cancelled: bool = False) -> dict:
    if cancelled:
        result = []
    elif kind == "number":
        result = [
            {"from_name": target, "to_name": "row", "type": "number", "value": {"number": value}}
        ]
    else:
        result = [
            {
                "from_name": target,
                "to_name": "row",
                "type": "choices",
                "value": {"choices": [value]},
            }
        ]
    stamp = f"2026-01-01T00:00:{n:02d}.000000Z"
    return {
        "id": n,
        "result": result,
        "was_cancelled": cancelled,
        "completed_by": 1 + n % 2,
        "created_at": stamp,
        "updated_at": stamp,
    }


def json_export(
    tasks: list[dict], answers: dict, target: str = "target", kind: str = "number"
) -> list[dict]:
    """Label Studio's JSON export. ``answers``: alloop id -> list of values (None: the annotator skipped)."""
    out, n = [], 0
    for i, t in enumerate(tasks):
        anns = []
        for v in answers.get(t["data"]["alloop_id"], []):
            n += 1
            anns.append(_annotation(n, target, v, kind, cancelled=v is None))
        out.append({"id": i + 1, "data": t["data"], "annotations": anns, "predictions": []})
    return out


def json_min_export(full: list[dict], target: str = "target") -> list[dict]:
    """JSON-MIN as Label Studio's converter writes it: one flat record per non-cancelled annotation."""
    out = []
    for t in full:
        anns = [a for a in t["annotations"] if not a["was_cancelled"]]
        if not t["annotations"]:
            out.append(
                {
                    **t["data"],
                    "id": t["id"],
                    "annotator": None,
                    "annotation_id": None,
                    "created_at": None,
                    "updated_at": None,
                    "lead_time": None,
                }
            )
        for a in sorted(anns, key=lambda a: a["created_at"], reverse=True):
            rec = {**t["data"], "id": t["id"]}
            for r in a["result"]:
                v = r["value"]
                rec[r["from_name"]] = (
                    v["choices"][0] if "choices" in v else [{"number": v["number"]}]
                )
            rec.update(
                annotator=a["completed_by"],
                annotation_id=a["id"],
                created_at=a["created_at"],
                updated_at=a["updated_at"],
                lead_time=1.0,
            )
            out.append(rec)
    return out


def csv_export(full: list[dict], path: Path, target: str = "target") -> Path:
    """Label Studio's CSV export: the JSON-MIN records, dicts and lists as JSON text, non-numbers quoted."""
    recs = json_min_export(full, target)
    keys = sorted({k for r in recs for k in r})
    with open(path, "w", newline="", encoding="utf8") as f:
        w = csv.DictWriter(f, fieldnames=keys, quoting=csv.QUOTE_NONNUMERIC)
        w.writeheader()
        for r in recs:
            w.writerow(
                {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
            )
    return path


def write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


# --- a regression run with a Label Studio round --------------------------------------------------


@pytest.fixture
def ls_run(run, runs):
    """The prepared run with round 2 asked as Label Studio tasks (4 rows)."""
    q = ok(
        invoke(["query", "r", "-k", "4", "--format", "labelstudio", "--json"], runs), "query"
    ).json()
    tasks = json.loads(Path(q["path"]).read_text())
    return run, q, tasks


def labels_of(run: Path) -> pd.DataFrame:
    state = json.loads((run / "state.json").read_text())
    return pd.read_parquet(run / state["labels_file"]).set_index("id")


def outstanding_of(run: Path) -> set:
    return set(json.loads((run / "state.json").read_text())["outstanding"])


def test_tasks_file_and_labeling_config(ls_run):
    run, q, tasks = ls_run
    assert (
        q["file"] == "queries/round-0002.labelstudio.json"
        and q["labeling_config"] == "queries/round-0002.labelstudio.xml"
    )
    assert len(tasks) == 4
    ids = [t["data"]["alloop_id"] for t in tasks]
    assert all(isinstance(i, int) for i in ids) and {str(i) for i in ids} <= outstanding_of(run)
    for rank, t in enumerate(tasks, 1):
        assert (
            t["data"]["alloop_run"] == "r"
            and t["data"]["alloop_round"] == 2
            and t["data"]["alloop_rank"] == rank
        )
        assert set(t["data"]["item"]) == set(FEATURES)
        (pred,) = t["predictions"]
        assert pred["model_version"] == "alloop r round 2"
        (res,) = pred["result"]
        assert res["from_name"] == "target" and res["to_name"] == "row" and res["type"] == "number"
        assert isinstance(res["value"]["number"], float)
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert (
        scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    )  # sorting by score, descending, is alloop's rank
    root = ET.fromstring((run / q["labeling_config"]).read_text())
    assert root.tag == "View"
    assert root.find("Table").attrib == {"name": "row", "value": "$item"}
    assert (
        root.find("Number").attrib["name"] == "target"
        and root.find("Number").attrib["toName"] == "row"
    )
    state = json.loads((run / "state.json").read_text())
    assert state["queries"][-1]["config"] == q["labeling_config"]
    ok(invoke(["verify", "r"], run.parent))


def test_predictions_are_the_models(ls_run):
    from alloop.commands.common import predict_rows
    from alloop.io import rundir

    run, _, tasks = ls_run
    x = pd.DataFrame([t["data"]["item"] for t in tasks])[list(FEATURES)].to_numpy(float)
    want = predict_rows(rundir.open_run(str(run)), x)[:, 0]
    got = [t["predictions"][0]["result"][0]["value"]["number"] for t in tasks]
    assert got == pytest.approx(list(want), rel=1e-9)


@pytest.mark.parametrize("fmt", ["json", "json-min", "csv"])
def test_ingest_an_export(ls_run, runs, tmp_path, fmt):
    run, _, tasks = ls_run
    ids = [t["data"]["alloop_id"] for t in tasks]
    answers = {
        ids[0]: [None],
        ids[1]: [1.5, 2.5],
        ids[2]: [-3.25],
    }  # skipped; two annotators; one; ids[3] never opened
    full = json_export(tasks, answers)
    path = {
        "json": lambda: write(tmp_path / "export.json", full),
        "json-min": lambda: write(tmp_path / "min.json", json_min_export(full)),
        "csv": lambda: csv_export(full, tmp_path / "export.csv"),
    }[fmt]()
    res = ok(
        invoke(["ingest", "r", path, "--resolve", "mean", "--no-train", "--json"], runs), "ingest"
    ).json()
    assert res["added"] == 2
    labels = labels_of(run)
    assert labels.loc[ids[1], "target"] == 2.0 and labels.loc[ids[2], "target"] == -3.25
    assert str(ids[3]) in outstanding_of(run) and ids[0] not in labels.index
    assert any("disagreed on 1 task" in n and str(ids[1]) in n for n in res["notes"])
    # only the full JSON export carries the skip (JSON-MIN and CSV leave cancelled annotations out)
    assert (str(ids[0]) in outstanding_of(run)) == (fmt != "json")


def test_a_skipped_task_returns_to_the_pool_and_is_reported_once(ls_run, runs, tmp_path):
    """#32: a skipped task was never asked again (it stayed outstanding) and was reported twice."""
    run, _, tasks = ls_run
    ids = [t["data"]["alloop_id"] for t in tasks]
    path = write(tmp_path / "export.json", json_export(tasks, {ids[0]: [None], ids[1]: [1.5]}))
    res = ok(invoke(["ingest", "r", path, "--no-train", "--json"], runs), "ingest").json()
    assert str(ids[0]) not in outstanding_of(run) and ids[0] not in labels_of(run).index
    assert {str(i) for i in ids[2:]} <= outstanding_of(run)  # never opened: still asked
    said = [n for n in res["notes"] if str(ids[0]) in n or "skipped" in n]
    assert len(said) == 1 and "returned to the pool" in said[0], res["notes"]
    assert "2 ids left blank stay outstanding" in res["notes"]  # ids[2:], not the skipped one
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["returned"] == 1


def test_a_skip_alone_is_committed_and_the_row_can_be_asked_again(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    ids = [t["data"]["alloop_id"] for t in tasks]
    path = write(tmp_path / "export.json", json_export(tasks, {ids[0]: [None]}))
    res = ok(invoke(["ingest", "r", path, "--json"], runs), "ingest").json()
    assert res["added"] == 0 and "trained" not in res
    assert str(ids[0]) not in outstanding_of(run)


def test_resolve_latest_takes_the_last_annotation(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    ids = [t["data"]["alloop_id"] for t in tasks]
    full = json_export(tasks, {ids[0]: [1.0, 7.0, None]})  # the skip after them is not an answer
    ok(invoke(["ingest", "r", write(tmp_path / "e.json", full), "--no-train"], runs))
    assert labels_of(run).loc[ids[0], "target"] == 7.0


def _refused(run, runs, args, *needles):
    before = digest(run)
    line = assert_user_error(invoke(["ingest", "r", *args], runs), *needles)
    assert digest(run) == before
    return line


def test_a_task_of_another_run_is_refused(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    ids = [t["data"]["alloop_id"] for t in tasks]
    full = json_export(tasks, {ids[0]: [1.0], ids[1]: [2.0]})
    full[1]["data"] = {**full[1]["data"], "alloop_run": "other"}
    _refused(run, runs, [write(tmp_path / "e.json", full)], "from run 'other', not 'r'")
    full[1]["data"] = {"text": "a task someone else made"}
    _refused(run, runs, [write(tmp_path / "e.json", full)], "alloop did not write")


@pytest.mark.parametrize(
    "doc, needle",
    [
        ('[{"data": ', "not readable JSON"),
        ("42", "not a list of tasks"),
        ("[]", "has no tasks"),
        (
            '[{"id": 1, "data": {"alloop_id": 1, "alloop_run": "r"}, "annotations": 3}]',
            "not a list",
        ),
    ],
)
def test_malformed_exports_are_refused(ls_run, runs, tmp_path, doc, needle):
    run, _, _ = ls_run
    (tmp_path / "e.json").write_text(doc)
    _refused(run, runs, [tmp_path / "e.json"], needle)


def test_bad_values_are_refused(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    ids = [t["data"]["alloop_id"] for t in tasks]
    full = json_export(tasks, {ids[0]: [1.0]})
    full[0]["annotations"][0]["result"][0]["value"] = {"number": "lots"}
    _refused(run, runs, [write(tmp_path / "e.json", full)], "non-numeric", "'lots'")
    full[0]["annotations"][0]["result"][0]["value"] = {"number": float("inf")}
    (tmp_path / "e.json").write_text(json.dumps(full).replace("Infinity", "1e999"))
    _refused(run, runs, [tmp_path / "e.json"], "non-finite")


def test_an_id_that_is_not_in_the_pool_is_refused(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    full = json_export(tasks, {tasks[0]["data"]["alloop_id"]: [1.0]})
    full[0]["data"] = {**full[0]["data"], "alloop_id": 99999999}
    _refused(run, runs, [write(tmp_path / "e.json", full)], "99999999")


def test_resolve_rules_that_do_not_fit_the_task_are_refused(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    path = write(tmp_path / "e.json", json_export(tasks, {tasks[0]["data"]["alloop_id"]: [1.0]}))
    _refused(run, runs, [path, "--resolve", "majority"], "--resolve majority", "mean or latest")
    _refused(run, runs, [path, "--resolve", "median"], "unknown --resolve 'median'")


def test_a_task_already_labeled_differently_needs_overwrite(ls_run, runs, tmp_path):
    run, _, tasks = ls_run
    id_ = tasks[0]["data"]["alloop_id"]
    ok(
        invoke(
            [
                "ingest",
                "r",
                write(tmp_path / "a.json", json_export(tasks, {id_: [1.0]})),
                "--no-train",
            ],
            runs,
        )
    )
    _refused(
        run, runs, [write(tmp_path / "b.json", json_export(tasks, {id_: [2.0]}))], "--overwrite"
    )


# --- classification ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wine_ls(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ls-wine")
    truth = pd.read_parquet(WINE / "pool.parquet").set_index("id")["target"]
    seed = pd.concat(
        [truth[truth == c].iloc[:2] for c in ("class_0", "class_1", "class_2")]
    ).reset_index()
    seed.to_csv(runs / "seed.csv", index=False)
    ok(
        invoke(
            [
                "init",
                "wine",
                "--task",
                "classification",
                "--pool",
                WINE / "pool.parquet",
                "--labels",
                runs / "seed.csv",
                *FAST,
            ],
            runs,
        )
    )
    q = ok(invoke(["query", "wine", "-k", "3", "--format", "labelstudio", "--json"], runs)).json()
    return runs, q


def test_classification_tasks_and_majority(wine_ls, runs, tmp_path):
    src, q = wine_ls
    run = copy_run(src / "wine", runs, "r")
    tasks = json.loads((run / q["file"]).read_text())
    classes = ["class_0", "class_1", "class_2"]
    for t in tasks:
        (res,) = t["predictions"][0]["result"]
        assert res["type"] == "choices" and res["value"]["choices"][0] in classes
    root = ET.fromstring((run / q["labeling_config"]).read_text())
    choices = root.find("Choices")
    assert (
        choices.attrib["name"] == "target"
        and [c.attrib["value"] for c in choices.findall("Choice")] == classes
    )
    ids = [t["data"]["alloop_id"] for t in tasks]
    for t in tasks:
        t["data"]["alloop_run"] = "r"  # the copy is named r
    full = json_export(
        tasks,
        {ids[0]: ["class_1", "class_2", "class_1"], ids[1]: ["class_0", "class_2"]},
        kind="choices",
    )
    path = write(tmp_path / "e.json", full)
    before = digest(run)
    assert_user_error(
        invoke(["ingest", "r", path, "--resolve", "mean"], runs), "--resolve mean", "majority"
    )
    assert digest(run) == before
    res = ok(
        invoke(["ingest", "r", path, "--resolve", "majority", "--no-train", "--json"], runs)
    ).json()
    labels = labels_of(run)
    assert labels.loc[ids[0], "target"] == "class_1"  # two of three
    assert labels.loc[ids[1], "target"] == "class_2"  # a tie goes to the latest
    assert any("disagreed on 2 tasks" in n for n in res["notes"])
    assert str(ids[2]) in outstanding_of(run)


def test_labeling_config_escapes_names():
    xml = labelstudio.labeling_config(['a"b'], "classification", ["x<y", "z&w"])
    root = ET.fromstring(xml)
    assert [c.attrib["value"] for c in root.find("Choices").findall("Choice")] == ["x<y", "z&w"]
    assert root.find("Choices").attrib["name"] == 'a"b'
