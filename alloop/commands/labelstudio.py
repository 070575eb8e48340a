"""``alloop query NAME --format labelstudio``: the round's rows as Label Studio tasks, with the model's
predictions as pre-annotations, and the labeling configuration that fits the run (see ``io.labelstudio``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alloop.commands.common import config_of, predict_rows
from alloop.io import labelstudio

TASKS_EXT, CONFIG_EXT = "labelstudio.json", "labelstudio.xml"


def query_payload(run, frame: pd.DataFrame, round_: int, score_col: str) -> tuple:
    """(tasks JSON bytes, extension, {"config": (extension, XML bytes)}) for ``rundir.commit(query=...)``."""
    config = config_of(run)
    features, targets = list(config.pool.features), list(run.targets)
    preds = predictions(run, frame, features)
    doc = labelstudio.tasks(
        frame,
        id_col=config.pool.id_col,
        features=features,
        targets=targets,
        task=run.task,
        run_name=run.name,
        round_=round_,
        predictions=preds,
        score_col=score_col,
    )
    xml = labelstudio.labeling_config(targets, run.task, config.classes)
    return labelstudio.encode_tasks(doc), TASKS_EXT, {"config": (CONFIG_EXT, xml.encode("utf-8"))}


def predictions(run, frame: pd.DataFrame, features: list[str]) -> list | None:
    """The current model's value per row (regression: one float per target; classification: the most
    probable class), or None before the first training."""
    if run.state.get("checkpoint") is None or run.state.get("training"):
        return None
    x = frame[features].to_numpy(np.float64)
    out = np.asarray(predict_rows(run, x), np.float64)
    out = out.reshape(len(frame), -1)
    if run.task == "classification":
        classes = list(config_of(run).classes or ())
        return [classes[int(i)] if int(i) < len(classes) else None for i in np.argmax(out, axis=1)]
    return [list(row) for row in out]
