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
    id_col: str | None = None,
    target: list[str] | None = None,
) -> dict:
    """Validate a file of labels, append them to the run, and retrain (unless ``no_train``).

    ``add_class``: labels of classes the run does not know yet extend its class mapping (and the
    model's output layer) instead of being refused. ``devices``: as for ``train``. ``resolve``: how
    several annotations of one Label Studio task become one label (latest, mean or majority).
    ``id_col`` and ``target``: the file's names for the id and target columns (target names in the
    run's target order), when the labeler's file does not use the run's. Each label records the
    query round it answers (0: a seed label or a row never queried) and when it was ingested;
    a skipped Label Studio task goes back to the pool.
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
        lf, read_notes = read_labels_of(run, info, file, resolve, id_col, target)
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
        back, skip_notes = _skipped(run, lf)
        notes = [*read_notes, *notes, *skip_notes]
        added = _check_classes(run, ids, values, add_class)
        grown, grown_state = _grow_classes(run, added)
        rounds = answered_rounds(run, current, ids)
        new_rows = label_frame(config_of(run), ids, values, rounds)
        keep = current[~current["id"].isin(ids)] if len(current) else current
        merged = pd.concat([keep, new_rows], ignore_index=True) if len(keep) else new_rows
        gone = {str(i) for i in ids} | set(back)
        outstanding = {key: r for key, r in run.outstanding.items() if key not in gone}
        if len(ids):
            state = {"n_labels": len(merged), "outstanding": outstanding, **grown_state}
            run = rundir.commit(run, labels=merged, checkpoint=grown, state=state)
        elif back:
            run = rundir.commit(run, state={"outstanding": outstanding})
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
        if back:
            record["returned"] = len(back)
        if len(ids) or back:
            rundir.append_history(run, record)
        for n in notes:
            reporter.info(n)
        if not no_train and len(ids):
            from alloop.commands.train import train_locked

            run, trained = train_locked(run, info, reporter, devices=devices)
            record = {**record, "trained": trained}
    return record


def read_labels_of(
    run, info, file: str, resolve: str = "latest", id_col=None, target=None
) -> tuple[labelio.LabelFile, list[str]]:
    """The labels of a file: a Label Studio export (.json, or a CSV with alloop's task columns),
    else a label table.

    ``id_col`` and ``target`` name the file's columns when they differ from the run's.
    """
    targets = file_targets(run, target)
    if lsexport.is_export(file):
        if id_col is not None:
            raise UserError(
                "--id-col does not apply to a Label Studio export (its ids are in alloop_id): "
                "leave it out"
            )
        return lsexport.read_export(
            file,
            run_name=run.name,
            targets=targets,
            id_kind=run.id_kind,
            task=run.task,
            resolve=resolve,
        )
    if resolve != "latest":
        lsexport.check_resolve(resolve, run.task)
    lf = labelio.read_label_file(file, id_col or info.id_col, targets, run.id_kind, run.task)
    return lf, []


def file_targets(run, target: list[str] | None) -> tuple[str, ...]:
    """The file's target column names, in the run's target order (default: the run's names)."""
    if not target:
        return run.targets
    if len(target) != len(run.targets):
        raise UserError(
            f"--target names {len(target)} column(s) but run '{run.name}' has "
            f"{len(run.targets)} target(s) ({', '.join(run.targets)}): name one file column "
            "for each, in that order"
        )
    return tuple(target)


def answered_rounds(run, current: pd.DataFrame, ids) -> np.ndarray:
    """The query round each new label answers: the round that made it outstanding; for a label
    replaced with ``--overwrite`` the stored one's; 0 for a row no query asked."""
    stored = dict(zip(current["id"].tolist(), current["round"].tolist())) if len(current) else {}
    return np.array([run.outstanding.get(str(i), stored.get(i, 0)) for i in ids.tolist()], np.int64)


def _skipped(run, lf: labelio.LabelFile) -> tuple[list[str], list[str]]:
    """Outstanding ids the labeler skipped (they go back to the pool), and one note about them."""
    if lf.skipped_ids is None or not len(lf.skipped_ids):
        return [], []
    keys = [str(i) for i in lf.skipped_ids.tolist()]
    back = [k for k in keys if k in run.outstanding]
    notes = []
    if back:
        ex = ", ".join(back[:3]) + (", ..." if len(back) > 3 else "")
        notes.append(
            f"{len(back)} skipped tasks (ids {ex}) returned to the pool: a later query may ask "
            "them again"
        )
    if len(keys) > len(back):
        notes.append(
            f"{len(keys) - len(back)} skipped tasks were not outstanding (labeled or withdrawn "
            "already): nothing changed for them"
        )
    return back, notes


def _labeled_dict(run, current: pd.DataFrame) -> dict:
    if run.task == "classification":
        return dict(zip(current["id"].tolist(), current[run.targets[0]].tolist()))
    vals = current[list(run.targets)].to_numpy(np.float64)
    return {i: vals[j] for j, i in enumerate(current["id"].tolist())}


def _check_classes(run, ids, values, add_class: bool = False) -> list[str]:
    """The labels of ``values`` that are new classes (only with ``add_class``; otherwise they are an error)."""
    if run.task != "classification":
        if add_class:
            raise UserError("--add-class only applies to classification runs")
        return []
    known = list(config_of(run).classes or ())
    unknown = classmap.unknown(known, values)
    if unknown and not add_class:
        at = [i for i, v in zip(ids.tolist(), classmap.normalize(values)) if v == unknown[0]]
        more = f" and {len(at) - 1} more" if len(at) > 1 else ""
        raise UserError(
            f"label {unknown[0]!r} is not a known class ({', '.join(known)}), at id {at[0]}{more}: "
            "fix the file, or pass --add-class"
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
