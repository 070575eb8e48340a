"""``alloop verify``: check that a run's files agree with its state.json commit point.

Reads only. Every problem is reported as one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alloop.errors import UserError
from alloop.io import rundir
from alloop.io.atomic import sha256_file
from alloop.io.checkpoint import load_tree
from alloop.io.lock import run_lock
from alloop.training import layout

TEMP_PREFIX = ".tmp-"


def verify_run(name: str, repair: bool = False) -> dict:
    """{"problems": [...], "notes": [...]}: problems make the run inconsistent, notes are harmless.

    Leftovers of an interrupted command (temporary files, a torn history line) are notes: the
    committed state is intact. ``repair`` deletes the temporary files.
    """
    run = rundir.open_run(name)
    actions: list[str] = []
    if repair:
        with run_lock(run.path):
            run, actions = _repair(rundir.open_run(str(run.path)))
    problems = _check_files(run)
    if not problems:  # hash or presence failures make the deeper checks meaningless
        problems += _check_labels(run) + _check_checkpoint(run) + _check_test(run)
    temps = sorted(Path(run.path).rglob(f"{TEMP_PREFIX}*"))
    notes = [
        f"temporary file {p.relative_to(run.path)} left by an interrupted write"
        + (": removed" if repair else "")
        for p in temps
    ]
    if repair:
        for p in temps:
            p.unlink(missing_ok=True) if p.is_file() else None
    notes += _check_queries(run) + _check_history(run)
    return {
        "run": str(run.path),
        "ok": not problems,
        "problems": problems,
        "notes": actions + notes,
    }


def _valid(run: rundir.Run, rel: str | None, sha: str | None) -> bool:
    return (
        bool(rel) and (run.path / rel).exists() and (not sha or sha256_file(run.path / rel) == sha)
    )


def _loadable_checkpoint(run: rundir.Run, rel: str) -> bool:
    try:
        load_tree(run.path / rel, layout.checkpoint_like(run.config))
        return True
    except UserError:
        return False


def _repair(run: rundir.Run) -> tuple[rundir.Run, list[str]]:
    """Fall back to the last complete labels/checkpoint the state remembers; drop what cannot be restored."""
    st, prev, fix, actions = run.state, run.state.get("previous", {}), {}, []
    if st.get("labels_file") and not _valid(run, st["labels_file"], st.get("labels_sha256")):
        if _valid(run, prev.get("labels_file"), prev.get("labels_sha256")):
            fix.update(
                labels_file=prev["labels_file"],
                labels_sha256=prev.get("labels_sha256"),
                labels_at_checkpoint=None,
            )
            actions.append(
                f"labels: {st['labels_file']} is damaged; fell back to {prev['labels_file']}"
            )
        else:
            return run, [
                "labels: the labels file is damaged and no earlier copy remains; restore it from a backup"
            ]
    ck = st.get("checkpoint")
    if ck and not (_valid(run, ck, st.get("checkpoint_sha256")) and _loadable_checkpoint(run, ck)):
        old = prev.get("checkpoint")
        if (
            old
            and _valid(run, old, prev.get("checkpoint_sha256"))
            and _loadable_checkpoint(run, old)
        ):
            fix.update(
                checkpoint=old,
                checkpoint_sha256=prev.get("checkpoint_sha256"),
                labels_at_checkpoint=None,
                training=None,
            )
            actions.append(
                f"checkpoint: {ck} is damaged; fell back to {old} (the next command retrains)"
            )
        else:
            fix.update(
                checkpoint=None, checkpoint_sha256=None, labels_at_checkpoint=None, training=None
            )
            actions.append(f"checkpoint: {ck} is damaged; dropped it (the next command retrains)")
    if not fix:
        return run, actions
    if "labels_file" in fix:  # n_labels must follow the file we fell back to
        probe = rundir.Run(run.path, run.name, run.config, {**st, **fix})
        labeled = {str(i) for i in rundir.read_labels(probe)["id"].tolist()}
        fix["n_labels"] = len(labeled)
        fix["outstanding"] = {k: v for k, v in run.outstanding.items() if k not in labeled}
    return rundir.commit(run, state=fix), actions


def _check_files(run: rundir.Run) -> list[str]:
    refs = [
        (run.state.get("labels_file"), run.state.get("labels_sha256"), "labels file"),
        (run.state.get("checkpoint"), run.state.get("checkpoint_sha256"), "checkpoint"),
    ]
    out = []
    for rel, sha, what in refs:
        if not rel:
            continue
        path = run.path / rel
        if not path.exists():
            out.append(f"{what} {rel} named in state.json is missing")
        elif sha and sha256_file(path) != sha:
            out.append(f"{what} {rel} does not match its recorded sha256 (changed or corrupt)")
    return out


def _check_queries(run: rundir.Run) -> list[str]:
    """Query files belong to the user once written (filling them in is the normal case): notes only."""
    out = []
    for q in run.state.get("queries", []):
        path = run.path / q["file"]
        if not path.exists():
            out.append(f"query file {q['file']} was removed")
        elif q.get("sha256") and sha256_file(path) != q["sha256"]:
            out.append(
                f"query file {q['file']} was edited since it was written (filling it in is expected)"
            )
    return out


def _check_labels(run: rundir.Run) -> list[str]:
    try:
        labels = rundir.read_labels(run)
    except UserError as e:
        return [str(e)]
    out = []
    if len(labels) != run.n_labels:
        out.append(f"state.json counts {run.n_labels} labels, the labels file holds {len(labels)}")
    if labels["id"].duplicated().any():
        out.append(f"the labels file repeats id {labels['id'][labels['id'].duplicated()].iloc[0]}")
    if run.task == "regression" and len(labels):
        vals = labels[list(run.targets)].to_numpy(np.float64)
        if not np.all(np.isfinite(vals)):
            out.append("the labels file holds a missing or non-finite target")
    overlap = set(map(str, labels["id"].tolist())) & set(run.outstanding)
    if overlap:
        out.append(f"id {sorted(overlap)[0]} is both labeled and outstanding")
    return out


def _check_checkpoint(run: rundir.Run) -> list[str]:
    if not run.checkpoint_path:
        return []
    try:
        rundir.load_checkpoint(run, layout.checkpoint_like(run.config))
    except UserError as e:
        return [str(e)]
    return []


def _check_test(run: rundir.Run) -> list[str]:
    test = run.config.get("test")
    if not test:
        return []
    path = run.path / "test.parquet"
    if not path.exists():
        return ["test.parquet named in config.json is missing"]
    if sha256_file(path) != test["sha256"]:
        return ["test.parquet does not match its recorded sha256"]
    return []


def _check_history(run: rundir.Run) -> list[str]:
    path = run.path / "history.jsonl"
    if not path.exists():
        return []
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad += 1
    return (
        [f"history.jsonl has {bad} torn line(s) left by an interrupted append; skipped when read"]
        if bad
        else []
    )
