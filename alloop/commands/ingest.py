"""``alloop ingest``: validate a file of labels, store them in the run and retrain.

Validation comes first (file, ids, values, classes); then one commit adds the labels, and training
commits the new model. A user error at any step before the commit leaves the run as it was.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alloop.commands.common import config_of, label_frame, load_checkpoint, open_pool_of
from alloop.errors import UserError
from alloop.io import labels as labelio
from alloop.io import labelstudio as lsexport
from alloop.io import pool as poolio
from alloop.io import rundir
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.training import classmap


def ingest(
    name: str,
    file: str,
    *,
    no_train: bool = False,
    allow_unqueried: bool = False,
    overwrite: bool = False,
    add_class: bool = False,
    resolve: str = "latest",
    devices: int = 1,
    wait: float = 5.0,
    reporter: Reporter | None = None,
) -> dict:
    """Validate a file of labels, append them to the run, and retrain (unless ``no_train``).

    ``add_class``: labels of classes the run does not know yet extend its class mapping (and the
    model's output layer) instead of being refused. ``devices``: as for ``train``. ``resolve``: how
    several annotations of one Label Studio task become one label (latest, mean or majority).
    """
    reporter = reporter or Reporter()
    if (
        devices != 1
    ):  # one device is always there: JAX is imported only to train (never with --no-train)
        from alloop.strategies.stream import check_devices

        check_devices(devices)
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        info = open_pool_of(run)
        lf, read_notes = read_labels_of(run, info, file, resolve)
        current = rundir.read_labels(run)
        labeled = _labeled_dict(run, current)
        ids, values, notes = labelio.validate_ingest(
            lf,
            labeled,
            set(run.outstanding),
            lambda ids: poolio.require_ids(info, ids),
            allow_unqueried,
            overwrite,
        )
        notes = [*read_notes, *notes]
        added = _check_classes(run, values, add_class)
        grown, grown_state = _grow_classes(run, added)
        new_rows = label_frame(config_of(run), ids, values, run.round)
        keep = current[~current["id"].isin(ids)] if len(current) else current
        merged = pd.concat([keep, new_rows], ignore_index=True) if len(keep) else new_rows
        outstanding = {
            key: r for key, r in run.outstanding.items() if key not in {str(i) for i in ids}
        }
        if len(ids):
            state = {"n_labels": len(merged), "outstanding": outstanding, **grown_state}
            run = rundir.commit(run, labels=merged, checkpoint=grown, state=state)
        if added:
            what = f"added class{'es' if len(added) > 1 else ''} {', '.join(map(repr, added))}"
            notes = [*notes, f"{what}: the run now has {len(config_of(run).classes)} classes"]
        record = {
            "command": "ingest",
            "file": str(file),
            "added": int(len(ids)),
            "labels": run.n_labels,
            "outstanding": len(outstanding),
            "notes": notes,
        }
        if added:
            record["classes_added"] = added
        if len(ids):
            rundir.append_history(run, record)
        for n in notes:
            reporter.info(n)
        if not no_train and len(ids):
            from alloop.commands.train import train_locked

            run, trained = train_locked(run, info, reporter, devices=devices)
            record = {**record, "trained": trained}
    return record


def read_labels_of(
    run, info, file: str, resolve: str = "latest"
) -> tuple[labelio.LabelFile, list[str]]:
    """The labels of a file: a Label Studio export (.json, or a CSV with alloop's task columns), else a label table."""
    if lsexport.is_export(file):
        return lsexport.read_export(
            file,
            run_name=run.name,
            targets=run.targets,
            id_kind=run.id_kind,
            task=run.task,
            resolve=resolve,
        )
    if resolve != "latest":
        lsexport.check_resolve(resolve, run.task)
    return labelio.read_label_file(file, info.id_col, run.targets, run.id_kind, run.task), []


def _labeled_dict(run, current: pd.DataFrame) -> dict:
    if run.task == "classification":
        return dict(zip(current["id"].tolist(), current[run.targets[0]].tolist()))
    vals = current[list(run.targets)].to_numpy(np.float64)
    return {i: vals[j] for j, i in enumerate(current["id"].tolist())}


def _check_classes(run, values, add_class: bool = False) -> list[str]:
    """The labels of ``values`` that are new classes (only with ``add_class``; otherwise they are an error)."""
    if run.task != "classification":
        if add_class:
            raise UserError("--add-class only applies to classification runs")
        return []
    known = list(config_of(run).classes or ())
    unknown = classmap.unknown(known, values)
    if unknown and not add_class:
        raise UserError(
            f"label {unknown[0]!r} is not a known class ({', '.join(known)}): fix the file, or pass --add-class"
        )
    return unknown


def _grow_classes(run, added: list[str]):
    """(checkpoint or None, state changes) that give new classes their place: the mapping grows at its end,
    and the checkpoint's output layer (θ, θ̇, optimizer state) gets zero entries for them, so the next
    training starts from the trained weights of the existing classes.
    """
    if not added:
        return None, {}
    grown = [*config_of(run).classes, *added]
    state = {"classes": grown}
    tree, meta = load_checkpoint(run)
    if tree is None:
        return None, state
    state["labels_at_checkpoint"] = run.state.get(
        "labels_at_checkpoint"
    )  # still stale: it has not seen the new labels
    from alloop.training import fit as fitting

    tree = classmap.grow_tree(
        tree, fitting.checkpoint_like(config_of(run).replace(classes=tuple(grown)))
    )
    return (tree, {**meta, "classes": grown}), state


# --- tune-s ------------------------------------------------------------------------------------
