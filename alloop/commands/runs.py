"""``alloop runs``: the runs under the runs folder with their counts, read from state.json alone."""

from __future__ import annotations

from alloop.errors import UserError
from alloop.io import rundir


def list_runs() -> list[dict]:
    """One record per run directory under ``rundir.runs_root()`` (name, task, labels, outstanding,
    round), sorted by name; a directory that is not a readable run says why instead."""
    rows = []
    for name in rundir.run_names():
        try:
            run = rundir.open_run(str(rundir.runs_root() / name))
        except UserError as e:
            rows.append({"name": name, "error": str(e)})
            continue
        rows.append(
            {
                "name": name,
                "task": run.task,
                "labels": run.n_labels,
                "outstanding": len(run.outstanding),
                "round": run.round,
            }
        )
    return rows
