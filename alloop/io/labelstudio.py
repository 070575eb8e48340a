"""Label Studio files: the tasks alloop hands out, the labeling configuration, and the exports it reads back.

A task carries the row under ``data``: ``alloop_id`` (the pool id), ``alloop_run`` (the run's name),
``alloop_round`` and ``item`` (the features, shown by a ``<Table>``). Its one prediction names the run
and round in ``model_version``, has a ``score`` that sorts most useful first (1 for the first row of the
round, falling by rank) and the model's prediction as a pre-annotation: a ``Number`` per target for
regression, a ``Choices`` for classification.

Exports (JSON, JSON-MIN, CSV) are mapped back by ``alloop_id``; a task whose only annotations are
cancelled (skipped) is reported as skipped (``LabelFile.skipped_ids``: ingest returns it to the
pool), a cancelled annotation beside a real one is dropped; several annotations of one task are
resolved by ``latest``, ``mean`` (regression) or ``majority`` (classification), and the tasks where
annotators disagreed are reported. Any problem is one UserError line; nothing here writes a file.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from alloop.errors import UserError
from alloop.io import labels as labelio
from alloop.io.atomic import to_json_value

RESOLVE_RULES = ("latest", "mean", "majority")
TABLE_NAME = "row"  # the <Table> that shows a task's features; every control points at it


# --- out: tasks and the labeling configuration ---------------------------------------------------


def tasks(
    frame,
    *,
    id_col: str,
    features,
    targets,
    task: str,
    run_name: str,
    round_: int,
    predictions=None,
    score_col: str = "score",
) -> list[dict]:
    """Label Studio tasks for the rows of a query frame (in rank order).

    ``predictions``: per row, the model's value for each target (regression: a sequence of floats;
    classification: a class name), or None for no pre-annotation (cold start).
    """
    n = len(frame)
    ids = [to_json_value(v) for v in frame[id_col].tolist()]
    scores = [to_json_value(v) for v in frame[score_col].tolist()]
    cols = {str(c): [to_json_value(v) for v in frame[c].tolist()] for c in features}
    out = []
    for i in range(n):
        data = {
            "alloop_id": ids[i],
            "alloop_run": run_name,
            "alloop_round": int(round_),
            "alloop_rank": i + 1,
            "alloop_score": scores[i],
            "item": {c: v[i] for c, v in cols.items()},
        }
        result = [] if predictions is None else _result(predictions[i], targets, task)
        pred = {
            "model_version": f"alloop {run_name} round {round_}",
            "score": round((n - i) / n, 6),
            "result": result,
        }
        out.append({"data": data, "predictions": [pred]})
    return out


def _result(value, targets, task: str) -> list[dict]:
    if value is None:
        return []
    if task == "classification":
        return [
            {
                "from_name": str(targets[0]),
                "to_name": TABLE_NAME,
                "type": "choices",
                "value": {"choices": [str(value)]},
            }
        ]
    vals = np.ravel(np.asarray(value, dtype=np.float64))
    return [
        {
            "from_name": str(t),
            "to_name": TABLE_NAME,
            "type": "number",
            "value": {"number": float(v)},
        }
        for t, v in zip(targets, vals)
        if math.isfinite(v)
    ]


def labeling_config(targets, task: str, classes=None) -> str:
    """The XML of a Label Studio project for this run: the features as a table, a control per target."""
    lines = ["<View>", f'  <Table name="{TABLE_NAME}" value="$item"/>']
    if task == "classification":
        lines.append(
            f'  <Choices name={quoteattr(str(targets[0]))} toName="{TABLE_NAME}" choice="single" required="true">'
        )
        lines += [f"    <Choice value={quoteattr(str(c))}/>" for c in classes or ()]
        lines.append("  </Choices>")
    else:
        for t in targets:
            lines.append(f"  <Header value={quoteattr(str(t))}/>")
            lines.append(
                f'  <Number name={quoteattr(str(t))} toName="{TABLE_NAME}" required="true"/>'
            )
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def task_table(path) -> pd.DataFrame:
    """A tasks file as a table: alloop_id, alloop_rank, alloop_score and the features, one row per task."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return pd.DataFrame(
        [
            {k: t["data"][k] for k in ("alloop_id", "alloop_rank", "alloop_score")}
            | t["data"]["item"]
            for t in doc
        ]
    )


def encode_tasks(task_list: list[dict]) -> bytes:
    return (json.dumps(task_list, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode(
        "utf-8"
    )


# --- in: exports ---------------------------------------------------------------------------------


def is_export(path) -> bool:
    """A .json file, or a CSV whose header has alloop's task columns (Label Studio's CSV export)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return True
    if suffix != ".csv" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return "alloop_id" in header and "alloop_run" in header


def read_export(
    path, *, run_name: str, targets, id_kind: str, task: str, resolve: str = "latest"
) -> tuple[labelio.LabelFile, list[str]]:
    """A Label Studio export as a LabelFile (one value per task, blanks for tasks with no usable
    annotation) and notes for the user (disagreements, skipped tasks)."""
    check_resolve(resolve, task)
    path, targets = Path(path), tuple(targets)
    records = _records(
        path
    )  # (where, data, annotation dict with result/was_cancelled/time/who) per annotation or task
    by_id: dict = {}
    order: list = []
    cancelled: set = set()
    for where, data, ann in records:
        id_ = _task_id(data, path, where, run_name, id_kind)
        if id_ not in by_id:
            by_id[id_] = []
            order.append(id_)
        if ann is None:
            continue
        if ann.get("cancelled"):
            cancelled.add(id_)
            continue
        values = [ann["values"].get(t) for t in targets]
        if all(_blank(v) for v in values):
            continue
        by_id[id_].append((ann.get("time") or "", ann.get("seq", 0), values, where))
    if not order:
        raise UserError(
            f"Label Studio export '{path}' has no tasks: export the project again with its annotated tasks"
        )
    cells = [[] for _ in targets]
    disagree = []
    for id_ in order:
        anns = sorted(by_id[id_], key=lambda a: (a[0], a[1]))
        value = (
            _resolve(anns, targets, task, resolve, id_, path, disagree)
            if anns
            else [None] * len(targets)
        )
        for j in range(len(targets)):
            cells[j].append(value[j])
    lf = labelio.build_label_file(
        order, cells, lambda i: f"task of id {order[i]}", path, targets, id_kind, task
    )
    skipped = [i for i in order if i in cancelled and not by_id[i]]
    lf.blank_ids = lf.blank_ids[~np.isin(lf.blank_ids, np.array(skipped, lf.blank_ids.dtype))]
    lf.skipped_ids = np.array(skipped, lf.blank_ids.dtype)
    notes = []
    if disagree:
        ex = ", ".join(str(d) for d in disagree[:3]) + (", ..." if len(disagree) > 3 else "")
        notes.append(
            f"annotators disagreed on {len(disagree)} tasks (ids {ex}): resolved by --resolve {resolve}"
        )
    overruled = len(cancelled) - len(skipped)
    if overruled:
        notes.append(
            f"{overruled} tasks skipped by one annotator and labeled by another: the label counts"
        )
    return lf, notes


def check_resolve(resolve: str, task: str) -> None:
    if resolve not in RESOLVE_RULES:
        raise UserError(f"unknown --resolve {resolve!r}: choose latest, mean or majority")
    if resolve == "mean" and task == "classification":
        raise UserError(
            "--resolve mean averages numbers: for a classification run use --resolve majority or latest"
        )
    if resolve == "majority" and task != "classification":
        raise UserError(
            "--resolve majority counts classes: for a regression run use --resolve mean or latest"
        )


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v)


def _task_id(data, path: Path, where: str, run_name: str, id_kind: str):
    if not isinstance(data, dict) or "alloop_id" not in data or "alloop_run" not in data:
        raise UserError(
            f"Label Studio export '{path}' has a task ({where}) that alloop did not write (no alloop_id/alloop_run in its data): "
            "import the tasks of `alloop query NAME --format labelstudio`, or remove that task"
        )
    if str(data["alloop_run"]) != run_name:
        raise UserError(
            f"Label Studio export '{path}' has a task ({where}) from run '{data['alloop_run']}', not '{run_name}': "
            f"ingest it into run '{data['alloop_run']}', or export only this run's tasks"
        )
    raw = data["alloop_id"]
    id_ = labelio.parse_id(raw, id_kind, path, where)
    return id_


def _resolve(anns: list, targets, task: str, rule: str, id_, path: Path, disagree: list) -> list:
    """One value per target from the annotations of a task (sorted oldest first)."""
    parsed = [[_parse_value(v, t, task, id_, path) for v, t in zip(a[2], targets)] for a in anns]
    if len({json.dumps(p) for p in parsed}) > 1:
        disagree.append(id_)
    if rule == "latest" or len(parsed) == 1:
        return parsed[-1]
    if rule == "mean":
        for p in parsed:
            if any(v is None for v in p):
                raise UserError(
                    f"Label Studio export '{path}' has an annotation of id {id_} that fills only some targets: fill every target"
                )
        return [float(np.mean([p[j] for p in parsed])) for j in range(len(targets))]
    counts = Counter(p[0] for p in parsed)
    top = max(counts.values())
    tied = {c for c, n in counts.items() if n == top}
    latest_of_tied = next(
        p[0] for p in reversed(parsed) if p[0] in tied
    )  # a tie goes to the most recent of the tied classes
    return [latest_of_tied]


def _parse_value(v, target: str, task: str, id_, path: Path):
    """An annotation's value for one target: a number (regression), a class (classification) or None."""
    if isinstance(v, str) and v.strip()[:1] in "[{":
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
    if isinstance(v, list):
        if len(v) > 1:
            raise UserError(
                f"Label Studio export '{path}' has {len(v)} values of '{target}' in one annotation of id {id_}: keep one"
            )
        v = v[0] if v else None
    if isinstance(v, dict):
        v = v.get("number", v.get("choices"))
        if isinstance(v, list):
            if len(v) != 1:
                raise UserError(
                    f"Label Studio export '{path}' has {len(v)} choices of '{target}' in one annotation of id {id_}: choose one"
                )
            v = v[0]
    if _blank(v):
        return None
    if task == "classification":
        return labelio.class_label(v)
    return labelio.parse_number(v, target, id_, path)


def _records(path: Path) -> list[tuple[str, dict, dict | None]]:
    if path.suffix.lower() == ".csv":
        return _csv_records(path)
    if not path.exists():
        raise UserError(f"label file '{path}' not found: check the path")
    if not path.is_file():
        raise UserError(
            f"label file '{path}' is not a file: pass the path of a Label Studio export"
        )
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"Label Studio export '{path}' is not readable JSON ({e}): export the project again as JSON, JSON-MIN or CSV"
        ) from None
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(t, dict) for t in doc):
        raise UserError(
            f"Label Studio export '{path}' is not a list of tasks: export the project as JSON, JSON-MIN or CSV"
        )
    out = []
    for i, t in enumerate(doc):
        where = f"task {t.get('id', i + 1)}"
        if "data" in t and isinstance(t.get("data"), dict):  # full JSON export
            anns = t.get("annotations", t.get("completions")) or []
            if not isinstance(anns, list):
                raise UserError(
                    f"Label Studio export '{path}' has annotations that are not a list ({where}): export the project again"
                )
            if not anns:
                out.append((where, t["data"], None))
            for j, a in enumerate(anns):
                out.append((where, t["data"], _annotation(a, path, where, j)))
        else:  # JSON-MIN: one flat record per annotation, the data keys at the top
            out.append((where, t, _min_annotation(t, i)))
    return out


def _annotation(a, path: Path, where: str, seq: int) -> dict:
    if not isinstance(a, dict):
        raise UserError(
            f"Label Studio export '{path}' has an annotation that is not an object ({where}): export the project again"
        )
    values: dict = {}
    for r in a.get("result") or []:
        if isinstance(r, dict) and "from_name" in r:
            values[str(r["from_name"])] = r.get("value")
    cancelled = bool(a.get("was_cancelled") or a.get("skipped"))
    return {
        "values": values,
        "cancelled": cancelled,
        "time": str(a.get("updated_at") or a.get("created_at") or ""),
        "seq": _seq(a.get("id"), seq),
    }


def _min_annotation(t: dict, seq: int) -> dict | None:
    if t.get("annotation_id") is None:  # a task exported without annotations
        return None
    return {
        "values": t,
        "cancelled": bool(t.get("was_cancelled")),
        "time": str(t.get("updated_at") or t.get("created_at") or ""),
        "seq": _seq(t.get("annotation_id"), seq),
    }


def _seq(v, default: int) -> int:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else default


def _csv_records(path: Path) -> list[tuple[str, dict, dict | None]]:
    """Label Studio's CSV export: one row per annotation, data keys as columns (dicts as JSON text)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        rows = list(csv.DictReader(text.splitlines(), dialect=_dialect(text)))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(
            f"Label Studio export '{path}' is not a readable CSV file ({e}): export the project again as CSV"
        ) from None
    out = []
    for i, r in enumerate(rows):
        r = {k: v for k, v in r.items() if k is not None}
        where = f"line {i + 2}"
        data = dict(r)
        ann = (
            None
            if not str(r.get("annotation_id") or "").strip()
            else {
                "values": r,
                "cancelled": False,
                "time": str(r.get("updated_at") or r.get("created_at") or ""),
                "seq": int(r["annotation_id"]) if str(r["annotation_id"]).strip().isdigit() else i,
            }
        )
        out.append((where, data, ann))
    return out


def _dialect(text: str):
    first = text.split("\n", 1)[0]
    return "excel" if first.count(",") >= first.count(";") else _Semicolon


class _Semicolon(csv.excel):
    delimiter = ";"
