"""``alloop status``: what a run holds, read from its files alone.

It imports nothing that starts JAX (a second of import for a command that only reads JSON): the
config, the run directory and the checkpoint's JSON metadata are all it needs.
"""

from __future__ import annotations

from pathlib import Path

from alloop.config import RunConfig
from alloop.errors import UserError
from alloop.io import rundir
from alloop.io.checkpoint import load_meta
from alloop.training import stopping


def status(name: str, stop_rules: dict | None = None) -> dict:
    """What a user wants to see at a glance: counts, round, s, tangent health, latest metrics, whether to stop.

    ``stop_rules``: thresholds of the stopping rules to override (``training.stopping.StopRules`` fields).
    """
    run = rundir.open_run(name)
    try:
        rules = stopping.StopRules.from_dict(stop_rules)
    except (TypeError, ValueError) as e:
        raise UserError(f"{e}: pass --stop NAME=NUMBER with one of those names") from None
    config = RunConfig.from_json(run.config)
    meta = load_meta(run.checkpoint_path) if run.checkpoint_path else {}
    return {
        "base": base_status(run),
        "run": str(run.path),
        "task": run.task,
        "classes": list(config.classes) if config.classes else None,
        "model": "auto" if config.model.is_auto else config.model.kind,
        "model_now": config.model.concrete().label(),  # for --model auto: the model chosen at the last training
        "model_choice": meta.get(
            "model_choice"
        ),  # why (auto runs): each candidate's CV loss, switched or kept
        "pool": config.pool.path,
        "pool_rows": config.pool.rows_at_init,
        "features": len(config.pool.features),
        "labels": run.n_labels,
        "outstanding": len(run.outstanding),
        "outstanding_by_round": _count_by_round(run.outstanding.values()),
        "labels_by_round": labels_by_round(run),
        "round": run.round,
        "s": config.s,
        "s_model": meta.get(
            "s"
        ),  # the s the current model was trained with (chosen per round for auto/loocv)
        "s_by_round": _s_by_round(run),
        "trained_on": run.state.get("labels_at_checkpoint") if run.checkpoint_path else None,
        "stale": needs_training(run),
        "residual": meta.get("figures", {}).get("residual"),
        "figures": meta.get("figures", {}),
        "warnings": meta.get("warnings", []),
        "queries": [q["file"] for q in run.state.get("queries", [])],
        "groups": group_table(meta.get("groups")),
        "stopping": stopping.decide(
            stopping.rounds_from_history(rundir.read_history(run)), run.task, rules
        ),
    }


def group_table(groups: dict | None) -> list[dict] | None:
    """Each group's value, labels, c_i and dc_i/ds at the last training (grouped runs; else None)."""
    if not groups:
        return None
    rows = zip(groups["values"], groups["labels"], groups["c"], groups["dc_ds"])
    return [{"group": g, "labels": n, "c": c, "dc_ds": dc} for g, n, c, dc in rows]


def labels_by_round(run) -> dict[int, int]:
    """How many labels answer each query round (0: seed labels and rows no query asked).

    In run directories written before labels recorded the round they answer, the round is the one
    current when the label was ingested.
    """
    if run.n_labels == 0:
        return {}
    return _count_by_round(rundir.read_labels(run)["round"].tolist())


def _count_by_round(rounds) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in rounds:
        counts[int(r)] = counts.get(int(r), 0) + 1
    return dict(sorted(counts.items()))


def _s_by_round(run) -> list[dict]:
    """The s of every training, from the history: the round current when it ran (the last query
    round before it), its labels, s. Several trainings can share a round (ingest, then train)."""
    return [
        {"round": r.get("round"), "labels": r.get("labels"), "s": r["s"]}
        for r in rundir.read_history(run)
        if r.get("command") == "train" and "s" in r
    ]


def needs_training(run: rundir.Run) -> bool:
    """Labels arrived since the checkpoint was trained (or there is none yet)."""
    return run.n_labels > 0 and (
        run.state.get("checkpoint") is None or run.state.get("labels_at_checkpoint") != run.n_labels
    )


def base_status(run: rundir.Run) -> dict | None:
    """Which base a user run inherits, and whether that base has been retrained since."""
    base = run.config.get("base")
    if not base:
        return None
    current = None
    if Path(base["run"]).exists():
        try:
            current = (
                rundir.open_run(base["run"]).state.get("checkpoint_sha256")
                == base["checkpoint_sha256"]
            )
        except UserError:
            current = None
    return {
        "run": base["run"],
        "version": base["checkpoint_sha256"][:12],
        "base_unchanged": current,
    }
