"""Many users, one base model (paper §3.4.1): user runs that inherit a base run, and folding back.

A user run copies its base's model, features, standardization and target scaling, and is
regularized towards the base's parameters: f = Σ L + s ||θ − θ0(s)||², with θ0(s) = θ0 + (s − s0)θ̇0
(see ``regularizers.inherited_anchor``). Its tangent therefore carries the base's curiosity: with no
user labels yet θ = θ0 and θ̇ = θ̇0 exactly, so the very first query already ranks by the base's SLD.
The user run keeps its own copy of θ0 and θ̇0 (``base.npz``), named by the base checkpoint's sha256,
so a base retrained later never changes a user run behind its back; ``status`` says when it did.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from alloop.commands.common import (
    BASE_FILE,
    TEST_FILE,
    config_of,
    label_frame,
    load_checkpoint,
    now,
    open_pool_of,
    read_seed_labels,
)
from alloop.commands.status import needs_training
from alloop.commands.train import train_locked
from alloop.config import TRAINERS, RunConfig
from alloop.core import sgdf
from alloop.errors import UserError
from alloop.io import atomic, rundir, tables
from alloop.io import pool as poolio
from alloop.io.checkpoint import encode_tree
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.training import fit as fitting


def _trained_base(base: rundir.Run):
    tree, meta = load_checkpoint(base)
    if tree is None or meta.get("partial") or needs_training(base):
        raise UserError(
            f"base run '{base.name}' has no up-to-date trained model: run `alloop train {base.name}` first"
        )
    if base.task != "regression":
        raise UserError(
            "--base works with regression runs for now: the base run is a classification run"
        )
    return tree, meta


def init_user_run(
    name: str,
    base_name: str,
    *,
    pool: str | None = None,
    labels: str | None = None,
    test: str | None = None,
    trainer: str = "newton",
    reporter: Reporter | None = None,
) -> dict:
    """Create a user run that inherits ``base_name``'s model and is anchored to its parameters."""
    if trainer not in TRAINERS:
        raise UserError(f"unknown --trainer {trainer!r}: choose one of {', '.join(TRAINERS)}")
    base = rundir.open_run(base_name)
    tree, meta = _trained_base(base)
    path = rundir.resolve_run_path(name)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"run '{name}' already exists at {path}: pick another name or delete it")
    p = config_of(base).pool
    given = pool or p.path
    info = poolio.open_pool(
        given,
        id_col=p.id_col,
        features=list(p.features),
        targets=[t for t in base.targets if t in poolio.pool_schema(given)],
    )
    if info.fingerprint != p.fingerprint:
        raise UserError(
            f"pool '{pool}' does not have the base run's id and feature columns ({', '.join(p.features)}): use a pool with the same schema"
        )
    config = _user_config(base, meta, info, given, trainer)
    seed = read_seed_labels(labels, info, config) if labels else None
    test_bytes = None
    if test:
        test_df = tables.read_test_set(test, list(info.features), list(base.targets), "regression")
        test_bytes = atomic.encode_table(test_df, "parquet")
        config = config.replace(
            test={
                "given": str(test),
                "rows": len(test_df),
                "sha256": atomic.sha256_bytes(test_bytes),
            }
        )
    run = rundir.create_run(path, config.to_json())
    try:
        atomic.write_bytes_atomic(
            run.path / BASE_FILE,
            encode_tree(
                {"theta0": tree["params"], "theta0_dot": tree["tangent"]},
                {"base": dict(config.base)},
            ),
        )
        if test_bytes is not None:
            atomic.write_bytes_atomic(run.path / TEST_FILE, test_bytes)
        ckpt = _initial_checkpoint(config, tree, meta)
        run = rundir.commit(run, labels=seed, checkpoint=ckpt, state={"labels_at_checkpoint": 0})
        rundir.append_history(
            run, {"command": "init", "base": config.base["run"], "labels": run.n_labels}
        )
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return {
        "run": str(run.path),
        "base": str(base.path),
        "pool_rows": info.n_rows,
        "labels": run.n_labels,
    }


def _user_config(
    base: rundir.Run, meta: dict, info: poolio.PoolInfo, pool_given: str, trainer: str
) -> RunConfig:
    """The base's config, anchored to its model: the user's pool, the base's s, its own trainer."""
    config = config_of(base)
    return config.replace(
        model=config.model.concrete(),
        tune=None,
        created=now(),
        s=float(meta["s"]),
        regularizer="inherited-anchor",
        trainer=trainer,
        test=None,
        pool=dataclasses.replace(
            config.pool,
            path=str(info.path),
            given=str(pool_given),
            targets_in_pool=tuple(info.targets),
            rows_at_init=info.n_rows,
        ),
        base={
            "run": str(base.path),
            "checkpoint_sha256": base.state["checkpoint_sha256"],
            "generation": base.generation,
            "s": float(meta["s"]),
            "target": meta.get("target"),
            "noise": meta.get("noise"),
        },
    )


def _initial_checkpoint(config: RunConfig, tree: dict, meta: dict):
    """θ = θ0 and θ̇ = θ̇0: the optimum and tangent of the user problem while it has no labels."""
    params = jax.tree_util.tree_map(np.asarray, tree["params"])
    opt = sgdf.make_optimizer(sgdf.TrainConfig.from_dict(config.train), 1)
    state = sgdf.init_state(jax.tree_util.tree_map(jax.numpy.asarray, params), opt, tree["tangent"])
    user_meta = {
        "s": config.s,
        "n_labels": 0,
        "round": 0,
        "noise": meta.get("noise"),
        "warnings": [],
        "figures": {},
        "tangent_norm": sgdf.tree_norm(tree["tangent"]),
        "target": meta.get("target"),
        "inherited": True,
    }
    return fitting.checkpoint_tree(state, params, tree["tangent"]), atomic.to_json_value(user_meta)


def base_update(
    base_name: str, users: list[str], *, wait: float = 5.0, reporter: Reporter | None = None
) -> dict:
    """Fold the users' labels into the base run and retrain it (SGDF, warm start)."""
    reporter = reporter or Reporter()
    if not users:
        raise UserError("name at least one user run with --from USER_RUN")
    base = rundir.open_run(base_name)
    frames = []
    for u in users:
        user = rundir.open_run(u)
        made_from = config_of(user).base
        if not made_from or Path(made_from["run"]).resolve() != base.path.resolve():
            raise UserError(
                f"run '{user.name}' was not made with --base {base_name}: only its own user runs fold into a base"
            )
        if Path(config_of(user).pool.path).resolve() != Path(config_of(base).pool.path).resolve():
            raise UserError(
                f"run '{user.name}' labels rows of another pool: base-update needs users labeling rows of the base's pool"
            )
        frames.append(rundir.read_labels(user))
    incoming = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with run_lock(base.path, wait):
        base = rundir.open_run(str(base.path))
        info = open_pool_of(base)
        current = rundir.read_labels(base)
        merged, added = _merge_labels(base, current, incoming)
        if added == 0:
            reporter.info("no new labels: the users' labels are all in the base already")
            return {"command": "base-update", "added": 0, "labels": base.n_labels}
        outstanding = {
            k: v
            for k, v in base.outstanding.items()
            if k not in set(map(str, merged["id"].tolist()))
        }
        base = rundir.commit(
            base, labels=merged, state={"n_labels": len(merged), "outstanding": outstanding}
        )
        rundir.append_history(
            base, {"command": "base-update", "from": [str(u) for u in users], "added": added}
        )
        base, trained = train_locked(base, info, reporter)
    return {
        "command": "base-update",
        "added": added,
        "labels": base.n_labels,
        "trained": trained,
        "version": base.state["checkpoint_sha256"][:12],
    }


def _merge_labels(
    base: rundir.Run, current: pd.DataFrame, incoming: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Base labels plus the users' new ones; a user label that contradicts another is refused."""
    targets = list(base.targets)
    known = {
        i: tuple(r) for i, r in zip(current["id"].tolist(), current[targets].to_numpy().tolist())
    }
    new_rows = {}
    for i, r in zip(incoming["id"].tolist(), incoming[targets].to_numpy().tolist()):
        prior = known.get(i, new_rows.get(i))
        if prior is not None and not np.allclose(prior, r):
            raise UserError(
                f"id {i} has conflicting labels ({prior} vs {tuple(r)}) across the base and its users: settle it in one run, then retry"
            )
        if i not in known:
            new_rows[i] = tuple(r)
    if not new_rows:
        return current, 0
    add = label_frame(
        config_of(base),
        np.array(list(new_rows), dtype=current["id"].dtype),
        np.array(list(new_rows.values())),
        base.round,
    )
    return pd.concat([current, add], ignore_index=True), len(new_rows)
