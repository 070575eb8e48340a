"""``alloop init``: create a run over a pool (check it, compute input statistics, take seed labels and a test set)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

import alloop
from alloop.commands.common import TEST_FILE, now, read_seed_labels
from alloop.config import ModelSpec, PoolSpec, RunConfig, default_model, default_s
from alloop.core import sgdf
from alloop.errors import UserError
from alloop.io import atomic, rundir, tables
from alloop.io import pool as poolio
from alloop.reporting import Reporter
from alloop.training import classmap, grouping
from alloop.training.fit import model_spec


def init_run(
    name: str,
    pool: str,
    *,
    id_col: str = "id",
    features: list[str] | None = None,
    targets: list[str] = ("target",),
    labels: str | None = None,
    test: str | None = None,
    model: ModelSpec | Mapping | None = None,
    s: float | str | None = None,
    train: dict | None = None,
    tune: dict | None = None,
    tangent: str = "sgdf",
    regularizer: str = "l2",
    task: str = "regression",
    classes: list[str] | None = None,
    trainer: str = "sgdf",
    group_col: str | None = None,
    max_groups: int = grouping.MAX_GROUPS,
    reporter: Reporter | None = None,
) -> dict:
    """Create the run ``name`` over ``pool``; every option is checked (``RunConfig.validate``) before the pool is read.

    ``model``: a ``ModelSpec`` or its JSON form (``{"kind": "mlp", "hidden": [64]}``); unless given,
    ``config.default_model`` (auto for regression with s chosen, else linear). Classification:
    ``classes`` (or, without it, the seed and test labels) fixes the class mapping. ``group_col``:
    per-group parameters under a learned per-group regularity (``core.groups``), one group per
    value of that integer column, at most ``max_groups`` of them.
    """
    reporter = reporter or Reporter()
    path = rundir.resolve_run_path(name)
    if path.exists() and not path.is_dir():
        raise UserError(f"{str(path)!r} is a file, not a run directory: pick another run name")
    if path.exists() and any(path.iterdir()):
        raise UserError(f"run '{name}' already exists at {path}: pick another name or delete it")
    spec = (
        model
        if isinstance(model, ModelSpec)
        else model_spec(**(dict(model) if model else {"kind": _default_kind(task, s, group_col)}))
    )
    placeholder = PoolSpec(str(pool), str(pool), id_col, (), "", 0)
    config = RunConfig(
        placeholder,
        {},
        spec,
        task,
        tuple(targets),
        s=default_s(task, spec.kind) if s is None else s,
        regularizer=regularizer,
        tangent=tangent,
        trainer=trainer,
        train={**sgdf.TrainConfig().to_dict(), **(train or {})},
        tune=dict(tune) if tune else None,
        created=now(),
        alloop_version=alloop.__version__,
    )
    config.validate()
    if group_col is not None:
        _check_grouped(config, group_col, max_groups)
    if task == "classification":
        classmap.check_targets(list(targets))
    elif classes:
        raise UserError("--classes only applies to --task classification")
    info, mean, std, values = _read_pool(
        pool, id_col, features, targets, reporter, group_col, max_groups
    )
    if group_col is not None:
        mean[-1], std[-1] = 0.0, grouping.GROUP_SCALE
        groups = {"column": group_col, "values": values}
        spec = dataclasses.replace(config.model, extra={**config.model.extra, "groups": groups})
        config = config.replace(model=spec)
    config = config.replace(
        pool=PoolSpec(
            str(info.path),
            str(pool),
            info.id_col,
            tuple(info.features),
            info.fingerprint,
            info.n_rows,
            tuple(info.targets),
            os.path.relpath(info.path, path),
        ),  # from_run: found again when run and pool move together
        standardizer={"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        id_kind=info.id_kind,
    )
    seed = read_seed_labels(labels, info, config) if labels else None
    test_bytes = test_df = None
    if test:
        test_df = tables.read_test_set(test, list(info.features), list(targets), task)
        test_bytes = atomic.encode_table(test_df, "parquet")
        config = config.replace(
            test={
                "given": str(test),
                "rows": len(test_df),
                "sha256": atomic.sha256_bytes(test_bytes),
            }
        )
    if task == "classification":
        target = targets[0]
        found = (
            seed[target] if seed is not None else (),
            test_df[target] if test_df is not None else (),
        )
        config = config.replace(
            classes=tuple(classmap.initial_classes(list(targets), *found, classes))
        )
    return _create(path, config, test_bytes, seed, info)


def _read_pool(
    pool: str, id_col: str, features, targets, reporter: Reporter, group_col=None, max_groups=0
):
    """The pool's schema, unique ids and feature moments (one streaming pass); targets found in it are never read.

    ``group_col`` becomes the last feature (and is not one of the others); its sorted values are
    returned last (None without it), read before the moments so that a missing group says so.
    """
    schema = poolio.pool_schema(pool)
    in_pool = [t for t in targets if t in schema]
    info = poolio.open_pool(pool, id_col=id_col, features=features, targets=in_pool)
    if group_col is not None:
        if group_col not in schema:
            raise UserError(
                f"--group-col {group_col!r} is not a column of the pool '{pool}': "
                f"name one of {', '.join(list(schema)[:12])}"
            )
        if not pa.types.is_integer(schema[group_col]):
            raise UserError(
                f"--group-col {group_col!r} holds {schema[group_col]}, not integers: "
                "recode the groups as integers (0, 1, 2, ...) in the pool"
            )
        feats = [f for f in info.features if f != group_col] + [group_col]
        info = poolio.open_pool(pool, id_col=id_col, features=feats, targets=in_pool)
    values = None if group_col is None else _group_values(info, group_col, max_groups, reporter)
    with reporter.progress("checking pool ids", None):
        poolio.check_unique_ids(info)
    with reporter.progress("computing feature statistics", info.n_rows) as advance:
        mean, std = poolio.feature_moments(info)
        advance(info.n_rows)
    for name, m, sd in zip(
        info.features, mean, std
    ):  # features must fit float32 training after standardization
        if not (np.isfinite(m) and np.isfinite(sd) and abs(m) < 1e30 and sd < 1e30):
            raise UserError(
                f"feature '{name}' has values too large to train on (beyond ±1e30): rescale it, or leave it out with --features"
            )
    return info, mean, std, values


def _default_kind(task: str, s, group_col) -> str:
    """The model unless told: linear for a grouped run (auto chooses among ungrouped models only)."""
    return "linear" if group_col else default_model(task, s)


def _check_grouped(config: RunConfig, group_col: str, max_groups: int) -> None:
    """Options a grouped run cannot take, refused before the pool is read."""
    if config.task != "regression":
        raise UserError("--group-col applies to --task regression")
    if config.model.is_auto:
        raise UserError("--group-col needs --model linear, poly or mlp (not auto)")
    if max_groups < 1:
        raise UserError(f"--max-groups must be at least 1, got {max_groups}")
    if group_col == config.pool.id_col or group_col in config.targets:
        raise UserError(f"--group-col {group_col!r} is the id or a target: name another column")


def _group_values(info, group_col: str, max_groups: int, reporter: Reporter) -> list[int]:
    """The sorted distinct groups of the pool; a null, a value beyond float32's exact integers, or
    more than ``max_groups`` groups is a UserError."""
    seen = np.zeros(0, np.int64)
    with reporter.progress("reading groups", info.n_rows) as advance:
        for ids, col in poolio.column_batches(info, group_col):
            if col.null_count:
                i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
                raise UserError(
                    f"pool has no group in column '{group_col}' for id {ids[i]}: "
                    "fill it in or drop the row"
                )
            seen = np.union1d(seen, col.to_numpy().astype(np.int64))
            if len(seen) > max_groups:
                raise UserError(
                    f"pool has more than {max_groups} groups in column '{group_col}': "
                    "raise --max-groups (memory grows with it, see README) or group more coarsely"
                )
            advance(len(ids))
    if len(seen) and np.max(np.abs(seen)) >= 2**24:
        raise UserError(
            f"group values in '{group_col}' reach {int(np.max(np.abs(seen)))}: recode them "
            "below 16,777,216 (they are held exactly as float32)"
        )
    return [int(v) for v in seen]


def _create(path, config: RunConfig, test_bytes, seed, info) -> dict:
    """Write the run directory; nothing of it is left behind if any step fails."""
    run = rundir.create_run(path, config.to_json())
    try:
        if test_bytes is not None:
            atomic.write_bytes_atomic(run.path / TEST_FILE, test_bytes)
        if seed is not None:
            run = rundir.commit(run, labels=seed, state={"n_labels": len(seed)})
        rundir.append_history(
            run, {"command": "init", "pool_rows": info.n_rows, "labels": run.n_labels}
        )
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return {
        "run": str(run.path),
        "pool_rows": info.n_rows,
        "features": list(info.features),
        "labels": run.n_labels,
    }
