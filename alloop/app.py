"""The use cases: init, train, query, ingest, status. Each reads the run, calls the core, commits.

Every verb takes the run's lock, validates everything the user gave before changing anything, and
changes the run's state through one ``rundir.commit`` (or not at all), so a user error (raised as
``UserError``) leaves every file of the run as it was.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import alloop
from alloop import classes as classmap, fitting, querying, streaming, tuning
from alloop.core import models, scorers, sgdf
from alloop.core.objective import default_curvature
from alloop.errors import UserError
from alloop.io import atomic, labels as labelio, pool as poolio, rundir, tables
from alloop.io.checkpoint import load_meta, load_tree
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.runstatus import needs_training, status  # noqa: F401 - part of this module's use cases

TEST_FILE = "test.parquet"
QUERY_FORMATS = ("csv", "parquet", "jsonl")
DEFAULT_BATCH_ROWS = 65536
COMMITTEE_SIZE = 5


# --- init --------------------------------------------------------------------------------------


def init_run(
    name: str,
    pool: str,
    *,
    id_col: str = "id",
    features: list[str] | None = None,
    targets: list[str] = ("target",),
    labels: str | None = None,
    test: str | None = None,
    model: dict | None = None,
    s: float | str | None = None,
    train: dict | None = None,
    tune: dict | None = None,
    tangent: str = "sgdf",
    regularizer: str = "l2",
    task: str = "regression",
    classes: list[str] | None = None,
    trainer: str = "sgdf",
    reporter: Reporter | None = None,
) -> dict:
    """Create a run over a pool: check the pool, compute input statistics, take seed labels and a test set.

    Classification: ``classes`` (or, without it, the seed and test labels) fixes the class mapping.
    """
    reporter = reporter or Reporter()
    path = rundir.resolve_run_path(name)
    if path.exists() and not path.is_dir():
        raise UserError(f"{str(path)!r} is a file, not a run directory: pick another run name")
    if path.exists() and any(path.iterdir()):
        raise UserError(f"run '{name}' already exists at {path}: pick another name or delete it")
    if s is None:
        s = default_s(task, model or {})
    _check_options(s, model or {}, train or {}, tangent, task)
    if trainer not in ("sgdf", "newton", "lbfgs", "cg"):
        raise UserError(f"unknown --trainer {trainer!r}: choose sgdf, newton, lbfgs or cg")
    targets = list(targets)
    _check_target_names(targets, id_col)
    if task == "classification":
        classmap.check_targets(targets)
    in_pool = [t for t in targets if t in poolio.pool_schema(pool)]
    info = poolio.open_pool(pool, id_col=id_col, features=features, targets=in_pool)
    with reporter.progress("checking pool ids", None):
        poolio.check_unique_ids(info)
    with reporter.progress("computing feature statistics", info.n_rows) as advance:
        mean, std = poolio.feature_moments(info)
        advance(info.n_rows)
    _check_moments(info, mean, std)
    config = _make_config(info, pool, targets, in_pool, mean, std, model or {}, s, train or {}, tangent, regularizer, task)
    config["trainer"] = trainer
    config["pool"]["from_run"] = os.path.relpath(info.path, path)  # found again when run and pool move together
    if tune:
        config["tune"] = dict(tune)  # how s is chosen (--folds): as given, defaults in tuning.TuneConfig
    seed = _read_seed_labels(labels, info, config) if labels else None
    test_bytes = test_df = None
    if test:
        test_df = tables.read_test_set(test, list(info.features), targets, task)
        test_bytes = atomic.encode_table(test_df, "parquet")
        config["test"] = {"given": str(test), "rows": len(test_df), "sha256": atomic.sha256_bytes(test_bytes)}
    _set_classes(config, seed, test_df, classes)
    run = rundir.create_run(path, config)
    try:
        if test_bytes is not None:
            atomic.write_bytes_atomic(run.path / TEST_FILE, test_bytes)
        if seed is not None:
            run = rundir.commit(run, labels=seed, state={"n_labels": len(seed)})
        rundir.append_history(run, {"command": "init", "pool_rows": info.n_rows, "labels": run.n_labels})
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return {"run": str(run.path), "pool_rows": info.n_rows, "features": list(info.features), "labels": run.n_labels}


def _set_classes(config: dict, seed, test_df, classes) -> None:
    """Store the class mapping of a classification run (``--classes`` only makes sense there)."""
    if config["task"] != "classification":
        if classes:
            raise UserError("--classes only applies to --task classification")
        return
    target = config["targets"][0]
    seed_values = seed[target] if seed is not None else ()
    test_values = test_df[target] if test_df is not None else ()
    config["classes"] = classmap.initial_classes(config["targets"], seed_values, test_values, classes)


def _check_moments(info: poolio.PoolInfo, mean, std) -> None:
    """Features must fit float32 training after standardization."""
    for name, m, sd in zip(info.features, mean, std):
        if not (np.isfinite(m) and np.isfinite(sd) and abs(m) < 1e30 and sd < 1e30):
            raise UserError(f"feature '{name}' has values too large to train on (beyond ±1e30): rescale it, or leave it out with --features")


def default_s(task: str, model: dict) -> float | str:
    """The s of a new run unless told (docs/choosing-s.md has the measurements): ``auto`` for linear and
    poly regression, where it beat s = 1 on average; 1 for MLPs, where auto's SGDF cross-validation on
    few labels chose erratic s and raised the test RMSE (1.00-1.24x), and for classification, where on
    separable label sets it runs s to its lower bound."""
    return "auto" if task == "regression" and model.get("kind", "linear") in ("linear", "poly") else 1.0


def _check_options(s, model: dict, train: dict, tangent: str, task: str) -> None:
    if not tuning.is_mode(s) and not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
        raise UserError(f"--s must be a positive number, auto or loocv, got {s}: try --s auto")
    if s == "loocv" and (model.get("kind", "linear") == "mlp" or task != "regression"):
        raise UserError("--s loocv needs a linear or poly regression model: use --s auto")
    if model.get("kind", "linear") not in ("linear", "poly", "mlp"):
        raise UserError(f"unknown --model {model.get('kind')!r}: choose linear, poly or mlp")
    _check_model(model)
    if tangent not in ("sgdf", "cg", "exact"):
        raise UserError(f"unknown --tangent {tangent!r}: choose sgdf, cg or exact")
    if task not in ("regression", "classification"):
        raise UserError(f"unknown --task {task!r}: choose regression or classification")
    for key in ("epochs", "batch_size"):
        if key in train and int(train[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if "min_steps" in train and int(train["min_steps"]) < 0:
        raise UserError("--min-steps must be 0 or more")
    if "lr" in train and not (math.isfinite(train["lr"]) and train["lr"] > 0):
        raise UserError("--lr must be a positive number")
    if train.get("optimizer", "adam") not in ("adam", "sgd"):
        raise UserError(f"unknown --optimizer {train.get('optimizer')!r}: choose adam or sgd")


RESERVED = ("id", "round", "time", "rank", "score")  # columns alloop writes beside the targets


def _check_target_names(targets: list, id_col: str) -> None:
    """Target names must not collide with the columns of the labels and query files."""
    for t in targets:
        if t in RESERVED or t == id_col:
            names = ", ".join(dict.fromkeys([id_col, *RESERVED]))
            raise UserError(f"target column {t!r} clashes with a column alloop writes ({names}): rename it in the pool and labels")
    if len(set(targets)) < len(targets):
        raise UserError(f"--target names a column twice ({','.join(targets)}): list each target once")


def _check_model(model: dict) -> None:
    """Model options that training would otherwise trip over (with a traceback), refused at init."""
    kind = model.get("kind", "linear")
    if kind == "poly" and int(model.get("degree", 3)) < 1:
        raise UserError(f"--degree must be at least 1, got {model['degree']}")
    if kind == "mlp" and any(int(h) < 1 for h in model.get("hidden", [64, 64])):
        raise UserError(f"--hidden sizes must be at least 1, got {model['hidden']}: try --hidden 64,64")
    if kind == "mlp" and model.get("activation", "tanh") not in models.ACTIVATIONS:
        raise UserError(f"unknown --activation {model['activation']!r}: choose {', '.join(sorted(models.ACTIVATIONS))}")
    if model.get("curvature", "hessian") not in ("hessian", "gauss-newton"):
        raise UserError(f"unknown --curvature {model['curvature']!r}: choose hessian or gauss-newton")


def _make_config(info, pool_given, targets, in_pool, mean, std, model, s, train, tangent, regularizer, task) -> dict:
    model = {"kind": "linear", **model}
    curvature, damping = default_curvature(model["kind"])
    model.setdefault("curvature", curvature)
    model.setdefault("damping", damping)
    pool_abs = Path(info.path)
    return {
        "alloop_version": alloop.__version__,
        "created": _now(),
        "task": task,
        "id_kind": info.id_kind,
        "targets": targets,
        "pool": {
            "path": str(pool_abs),
            "given": str(pool_given),
            "id_col": info.id_col,
            "features": list(info.features),
            "targets_in_pool": list(in_pool),
            "fingerprint": info.fingerprint,
            "rows_at_init": info.n_rows,
        },
        "standardizer": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "model": model,
        "regularizer": regularizer,
        "s": s if tuning.is_mode(s) else float(s),
        "tangent": tangent,
        "train": {**sgdf.TrainConfig().to_dict(), **train},
        "test": None,
    }


def _read_seed_labels(path: str, info: poolio.PoolInfo, config: dict) -> pd.DataFrame:
    lf = labelio.read_label_file(path, info.id_col, tuple(config["targets"]), info.id_kind, config["task"])
    keep = ~np.isin(lf.ids, lf.blank_ids) if len(lf.blank_ids) else np.ones(len(lf.ids), bool)
    poolio.require_ids(info, lf.ids[keep])
    return _label_frame(config, lf.ids[keep], lf.values[keep], round_=0)


def _label_frame(config: dict, ids, values, round_: int) -> pd.DataFrame:
    values = np.asarray(values)
    cols: dict = {"id": ids}
    if config["task"] == "classification":
        cols[config["targets"][0]] = values.astype(object)
    else:
        values = values.reshape(len(ids), len(config["targets"]))
        for j, t in enumerate(config["targets"]):
            cols[t] = values[:, j].astype(np.float64)
    cols["round"] = np.full(len(ids), round_, np.int64)
    cols["time"] = np.array([_now()] * len(ids), dtype=object)
    return pd.DataFrame(cols)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- shared pieces -----------------------------------------------------------------------------


def open_pool_of(run: rundir.Run) -> poolio.PoolInfo:
    """The run's pool, found where init saw it (or beside the run when copied together), schema-checked."""
    p = run.config["pool"]
    places = [Path(p["path"]), run.path / p.get("from_run", p["given"]), run.path / p["given"]]
    path = next((q for q in places if q.exists()), None)
    if path is None:
        raise UserError(f"the pool of run '{run.name}' is not at {p['path']} any more: put it back, then retry")
    return poolio.open_recorded(path, p["id_col"], p["features"], p.get("targets_in_pool", []), p["fingerprint"], run.name)


def labeled_arrays(run: rundir.Run, info: poolio.PoolInfo, labels: pd.DataFrame | None = None):
    """(ids, X, Y) of the labeled rows: features from the pool, labels from the run."""
    labels = rundir.read_labels(run) if labels is None else labels
    ids = labels["id"].to_numpy()
    if len(ids) == 0:
        return ids, np.zeros((0, len(info.features)), np.float32), np.zeros((0, len(run.targets)))
    rows = poolio.take_rows(info, ids)
    x = rows[list(info.features)].to_numpy(np.float32)
    y = labels[list(run.targets)].to_numpy()
    return ids, x, y


def _test_arrays(run: rundir.Run):
    """The run's held-out (X, Y), hash-checked like the labels; None without a test set."""
    test = run.config.get("test")
    if not test:
        return None
    path = run.path / TEST_FILE
    if not path.is_file() or atomic.sha256_file(path) != test["sha256"]:
        how = "missing" if not path.is_file() else "corrupt"
        raise UserError(f"test set {TEST_FILE} of run '{run.name}' is {how}: run `alloop verify {run.name}`")
    df = tables.read_table(path)
    return df[run.config["pool"]["features"]].to_numpy(np.float32), df[list(run.targets)].to_numpy()


def _checkpoint(run: rundir.Run):
    loaded = rundir.load_checkpoint(run, fitting.checkpoint_like(run.config))
    return loaded if loaded is not None else (None, None)


# --- train -------------------------------------------------------------------------------------


def train(
    name: str, *, fresh: bool = False, epochs: int | None = None, s: float | str | None = None, folds: int | None = None,
    devices: int = 1, wait: float = 5.0, reporter: Reporter | None = None,
) -> dict:
    """Fit the model with SGDF on all labels so far (warm-started from the last checkpoint).

    ``s`` (a number, "auto" or "loocv") and ``folds`` override the run's choice of s for this training.
    ``devices``: split every minibatch over that many local devices (data-parallel training).
    """
    reporter = reporter or Reporter()
    streaming.check_devices(devices)
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        info = open_pool_of(run)
        run, record = _train_locked(run, info, reporter, fresh=fresh, epochs=epochs, s=s, folds=folds, devices=devices)
    return record


def _train_locked(
    run, info, reporter: Reporter, fresh: bool = False, epochs: int | None = None, labels=None, s=None, folds=None, devices: int = 1,
):
    if run.n_labels == 0:
        raise UserError(
            f"run '{run.name}' has no labels yet: `alloop query {run.name}` picks rows to label, "
            f"then `alloop ingest {run.name} FILE` (or init with --labels)"
        )
    if epochs is not None and epochs < 1:
        raise UserError("--epochs must be at least 1")
    _, x, y = labeled_arrays(run, info, labels)
    test = _test_arrays(run)  # before training: a damaged test set is refused before anything is committed
    tree, meta = (None, None) if fresh else _checkpoint(run)  # --fresh also recovers from a lost checkpoint
    progress = run.state.get("training")
    resume = None
    if progress and tree is not None and progress["n_labels"] == run.n_labels and progress.get("epochs") == epochs and not fresh:
        resume = (fitting.state_from_tree(tree), int(progress["epochs_done"]))
        reporter.info(f"resuming the interrupted training at epoch {resume[1]}")
    params = tangent = None
    if tree is not None and not fresh and resume is None:
        params, tangent = tree["params"], tree["tangent"]
    config, choice = _training_s(run, x, y, meta, progress if resume else None, params, tangent, s, folds, reporter)
    if devices > 1 and run.config.get("trainer", "sgdf") != "sgdf":
        reporter.info(f"--devices applies to SGDF: the {run.config['trainer']} trainer runs full-batch on one device")
    total = fitting.train_config(run.config, len(x), epochs=epochs).epochs
    box = {"run": run}

    def save_progress(state, done: int) -> None:
        """Commit the training state every few epochs, so that a killed training resumes."""
        part = fitting.checkpoint_tree(state, state.params, state.tangent)
        info_ = {"n_labels": run.n_labels, "epochs_done": done, "epochs": epochs, "s": config["s"]}
        box["run"] = rundir.commit(
            box["run"], checkpoint=(part, {"partial": True, **info_}),
            state={"training": info_, "labels_at_checkpoint": None},
        )

    with reporter.progress(f"training on {len(x)} labels", total) as advance:
        if resume is not None:
            advance(resume[1])
        result = fitting.fit(
            config, x, y, params=params, tangent=tangent, epochs=epochs, resume=resume,
            on_epoch=lambda e, t, loss: advance(1), on_checkpoint=save_progress, devices=devices, **inheritance(run),
        )
    run = box["run"]
    for w in result.warnings:
        reporter.warn(w)
    figures = {"train_loss": result.train_loss, "residual": result.residual, "epochs": result.epochs}
    if test is not None:
        figures.update(fitting.metrics(config, result.params, *test, target=result.target))
    meta = {
        "s": config["s"],
        "s_choice": choice.record() if choice else None,
        "n_labels": run.n_labels,
        "round": run.round,
        "noise": [float(v) for v in np.ravel(result.noise)],
        "warnings": result.warnings,
        "figures": figures,
        "tangent_norm": sgdf.tree_norm(result.tangent),
        "target": result.target,
        "classes": run.config.get("classes"),
    }
    tree = fitting.checkpoint_tree(result.state, result.params, result.tangent)
    run = rundir.commit(run, checkpoint=(tree, atomic.to_json_value(meta)), state={"labels_at_checkpoint": run.n_labels, "training": None})
    record = {"command": "train", "labels": run.n_labels, "round": run.round, "s": config["s"], **figures, "seconds": round(result.seconds, 3), "warnings": result.warnings}
    if choice:
        record["s_choice"] = {**choice.record(), "seconds": round(choice.seconds, 3)}
    rundir.append_history(run, record)
    return run, record


def _training_s(run, x, y, meta, progress, params, tangent, s, folds, reporter: Reporter):
    """The run's config with the numeric s to train with now, and how it was chosen (None for a given number).

    A resumed training keeps the s it started with; otherwise "auto" starts from the last s used.
    """
    config = run.config if s is None else {**run.config, "s": tuning.parse_s(s)}
    if folds is not None:
        if folds < 2:
            raise UserError("--folds must be at least 2")
        config = {**config, "tune": {**config.get("tune", {}), "folds": int(folds)}}
    if progress and isinstance(progress.get("s"), (int, float)):
        return tuning.with_s(config, progress["s"]), None
    if not tuning.is_mode(config["s"]):
        return tuning.with_s(config, config["s"]), None
    with reporter.progress(f"choosing s ({config['s']}) on {len(x)} labels", None):
        value, choice = tuning.resolve_s(config, x, y, s_prev=_last_s(run, meta), params=params, tangent=tangent)
    reporter.info(f"s = {value:.4g} ({choice.mode}: {choice.folds}-fold CV loss {choice.cv_loss:.4g}, {len(choice.evaluations)} evaluations)")
    if choice.stop == "bound":
        reporter.warn(f"the CV loss was still falling at the end of the search range (s = {choice.evaluations[-1].s:.3g}): these labels do not pin s down "
                      "(`alloop tune-s` shows the curve; give a number with --s to fix it)")
    return tuning.with_s(config, value), choice


def _last_s(run, meta) -> float | None:
    """The s the latest completed training used (checkpoint, else history), to warm-start the search."""
    if meta and not meta.get("partial") and isinstance(meta.get("s"), (int, float)):
        return float(meta["s"])
    trained = [r["s"] for r in rundir.read_history(run) if r.get("command") == "train" and isinstance(r.get("s"), (int, float))]
    return float(trained[-1]) if trained else None


# --- query -------------------------------------------------------------------------------------


def query(
    name: str,
    *,
    k: int = 20,
    strategy: str | None = None,
    fmt: str = "csv",
    seed: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    devices: int = 1,
    wait: float = 5.0,
    reporter: Reporter | None = None,
) -> dict:
    """Score the pool and write the best ``k`` unlabeled rows to queries/round-NNNN.<fmt>.

    ``strategy``: None takes the task's default (``querying.default_strategy``). ``devices``: split every
    batch's rows over that many local devices (data-parallel scoring).
    """
    reporter = reporter or Reporter()
    if fmt not in QUERY_FORMATS:
        raise UserError(f"unknown --format {fmt!r}: choose csv, parquet or jsonl")
    run, strategy = open_for_query(name, k, strategy, devices)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        info = open_pool_of(run)
        if needs_training(run):
            reporter.info(f"the model is older than the labels ({run.n_labels}): training first")
            run, _ = _train_locked(run, info, reporter, devices=devices)
        seed = int(run.config["train"].get("seed", 0)) + run.round if seed is None else seed
        sel = _select(run, info, k, strategy, seed, batch_rows, reporter, devices)
        record, path = _commit_query(run, info, sel, strategy, fmt, reporter)
    return {**record, "path": str(path), "note": sel.note}


def open_for_query(name: str, k: int, strategy: str | None, devices: int) -> tuple[rundir.Run, str]:
    """The run a query will score and its strategy (None: the task's default), after checking the options."""
    if strategy is not None and strategy not in querying.STRATEGIES:
        raise UserError(f"unknown --strategy {strategy!r}: choose one of {', '.join(querying.STRATEGIES)}")
    if k < 1:
        raise UserError("-k must be at least 1")
    streaming.check_devices(devices)
    run = rundir.open_run(name)
    strategy = strategy or querying.default_strategy(run.task)
    querying.check_strategy(strategy, run.task)
    return run, strategy


def _commit_query(run, info, sel: querying.Selection, strategy: str, fmt: str, reporter: Reporter, extra: dict | None = None):
    """Write the picks as the next round's query file, make them outstanding, commit, log: (record, path).

    Shared by ``query`` and ``merge-queries`` (shards.py); the caller holds the run lock.
    """
    if len(sel.ids) == 0:
        raise UserError(f"every pool row of run '{run.name}' is labeled or outstanding: ingest the outstanding labels or add rows to the pool")
    if sel.note:
        reporter.info(sel.note)
    frame = _query_frame(run, info, sel)
    new_round = run.round + 1
    outstanding = {**run.outstanding, **{str(i): new_round for i in sel.ids}}
    run = rundir.commit(run, query=(frame, fmt), state={"round": new_round, "outstanding": outstanding})
    path = run.path / run.state["queries"][-1]["file"]
    record = {"command": "query", "round": new_round, "strategy": sel.strategy, "requested": strategy, "rows": len(sel.ids), "file": str(path.relative_to(run.path)), **(extra or {})}
    rundir.append_history(run, record)
    return record, path


BASE_FILE = "base.npz"


def inheritance(run: rundir.Run) -> dict:
    """For a run made with ``init --base``: its base model (θ0, θ̇0, s0) and the base's target statistics."""
    base = run.config.get("base")
    if not base:
        return {}
    model = fitting.build_model(run.config)
    like = model.init(jax.random.PRNGKey(0))
    tree = load_tree(run.path / BASE_FILE, {"theta0": like, "theta0_dot": like})
    return {"anchor": (tree["theta0"], tree["theta0_dot"], float(base["s"])), "target": base.get("target")}


def _select(run, info, k, strategy, seed, batch_rows, reporter: Reporter, devices: int = 1) -> querying.Selection:
    exclude = np.concatenate([rundir.read_labels(run)["id"].to_numpy(), run.outstanding_ids]).astype(
        np.int64 if run.id_kind == "int" else object
    )
    stats = fitting.standardizer(run.config)
    with reporter.progress(f"scoring the pool ({strategy})", info.n_rows) as advance:
        if strategy == "random":
            top = querying.stream_top(info, querying.random_scorer(seed), exclude, k, batch_rows, advance)
            return querying.picked(top, "random")
        tree, meta = _checkpoint(run)
        norm = 0.0 if tree is None else sgdf.tree_norm(tree["tangent"])
        is_sld = strategy in ("sld", "sld-topk")
        if strategy == "greedy" or tree is None or (is_sld and not norm > 0):  # zero, or NaN after a diverged training
            why = "cold start: no trained tangent yet" if norm == 0 else "the trained tangent is not finite (training diverged)"
            why, what = ("cold start: no trained model yet", strategy) if not is_sld else (why, "SLD")
            note = None if strategy == "greedy" else f"{why}, so {what} has nothing to say; using greedy farthest-point sampling"
            _, lx, _ = labeled_arrays(run, info)
            sel = querying.greedy_select(info, stats, lx, exclude, k, seed, batch_rows, advance, devices)
            sel.note = note
            return sel
        problem = fitting.build_problem(run.config, tree["params"], inheritance(run).get("anchor"))
        if is_sld:
            fn = scorers.sld(problem, tree["params"], tree["tangent"], np.asarray(meta["noise"], np.float32))
            if strategy == "sld":
                _, lx, _ = labeled_arrays(run, info)
                return querying.sld_diverse_select(info, fn, stats, lx, exclude, k, seed, batch_rows, advance, devices)
        elif strategy in querying.UNCERTAINTY:
            fn = querying.UNCERTAINTY[strategy](problem, tree["params"])
        else:  # committee
            _, lx, ly = labeled_arrays(run, info)
            members = fitting.bootstrap_members(tuning.with_s(run.config, tuning.trained_s(run.config, meta)), lx, ly, COMMITTEE_SIZE, seed, **inheritance(run))
            fn = (scorers.committee_kl if run.task == "classification" else scorers.committee)(problem, members)
        top = querying.stream_top(info, querying.model_scorer(fn, batch_rows, devices), exclude, k, batch_rows, advance)
        return querying.picked(top, strategy)


def _query_frame(run, info, sel: querying.Selection) -> pd.DataFrame:
    """id, rank, score, the features as stored (kept while streaming; else read from the pool) and empty targets."""
    id_col, features = run.config["pool"]["id_col"], run.config["pool"]["features"]
    rows = sel.rows.to_pandas() if sel.rows is not None else poolio.take_rows(info, sel.ids)
    frame = pd.DataFrame({id_col: rows[id_col], "rank": np.arange(1, len(sel.ids) + 1), "score": sel.scores})
    for c in features:
        frame[c] = rows[c].to_numpy()
    for t in run.targets:
        frame[t] = pd.Series([None] * len(sel.ids), dtype=object if run.task == "classification" else "float64")
    return frame


# --- ingest ------------------------------------------------------------------------------------


def ingest(
    name: str,
    file: str,
    *,
    no_train: bool = False,
    allow_unqueried: bool = False,
    overwrite: bool = False,
    add_class: bool = False,
    devices: int = 1,
    wait: float = 5.0,
    reporter: Reporter | None = None,
) -> dict:
    """Validate a file of labels, append them to the run, and retrain (unless ``no_train``).

    ``add_class``: labels of classes the run does not know yet extend its class mapping (and the
    model's output layer) instead of being refused. ``devices``: as for ``train``.
    """
    reporter = reporter or Reporter()
    streaming.check_devices(devices)
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        info = open_pool_of(run)
        lf = labelio.read_label_file(file, info.id_col, run.targets, run.id_kind, run.task)
        current = rundir.read_labels(run)
        labeled = _labeled_dict(run, current)
        ids, values, notes = labelio.validate_ingest(
            lf, labeled, set(run.outstanding), lambda ids: poolio.require_ids(info, ids), allow_unqueried, overwrite
        )
        added = _check_classes(run, values, add_class)
        grown, grown_state = _grow_classes(run, added)
        new_rows = _label_frame(run.config, ids, values, run.round)
        keep = current[~current["id"].isin(ids)] if len(current) else current
        merged = pd.concat([keep, new_rows], ignore_index=True) if len(keep) else new_rows
        outstanding = {key: r for key, r in run.outstanding.items() if key not in {str(i) for i in ids}}
        if len(ids):
            state = {"n_labels": len(merged), "outstanding": outstanding, **grown_state}
            run = rundir.commit(run, labels=merged, checkpoint=grown, state=state)
        if added:
            notes = [*notes, f"added class{'es' if len(added) > 1 else ''} {', '.join(map(repr, added))}: the run now has {len(run.config['classes'])} classes"]
        record = {"command": "ingest", "file": str(file), "added": int(len(ids)), "labels": run.n_labels, "outstanding": len(outstanding), "notes": notes}
        if added:
            record["classes_added"] = added
        if len(ids):
            rundir.append_history(run, record)
        for n in notes:
            reporter.info(n)
        if not no_train and len(ids):
            run, trained = _train_locked(run, info, reporter, devices=devices)
            record = {**record, "trained": trained}
    return record


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
    known = run.config.get("classes", [])
    unknown = classmap.unknown(known, values)
    if unknown and not add_class:
        raise UserError(f"label {unknown[0]!r} is not a known class ({', '.join(known)}): fix the file, or pass --add-class")
    return unknown


def _grow_classes(run, added: list[str]):
    """(checkpoint or None, state changes) that give new classes their place: the mapping grows at its end,
    and the checkpoint's output layer (θ, θ̇, optimizer state) gets zero entries for them, so the next
    training starts from the trained weights of the existing classes.
    """
    if not added:
        return None, {}
    grown = [*run.config["classes"], *added]
    state = {"classes": grown}
    tree, meta = _checkpoint(run)
    if tree is None:
        return None, state
    state["labels_at_checkpoint"] = run.state.get("labels_at_checkpoint")  # still stale: it has not seen the new labels
    tree = classmap.grow_tree(tree, fitting.checkpoint_like({**run.config, "classes": grown}))
    return (tree, {**meta, "classes": grown}), state


# --- tune-s ------------------------------------------------------------------------------------


def tune_s(
    name: str, *, plot: bool = False, out: str | None = None, s_min: float = 1e-3, s_max: float = 1e4, per_decade: int = 6,
    folds: int | None = None, wait: float = 5.0, reporter: Reporter | None = None,
) -> dict:
    """The validation error over a log grid of s (the paper's Figure 2) and the s that auto would choose now.

    Changes no model: it appends a "tune-s" record to the history and, with ``plot``, writes a PNG to
    ``out`` (default: plots/tune-s-round-NNNN.png in the run directory).
    """
    reporter = reporter or Reporter()
    if not (0 < s_min < s_max) or per_decade < 1:
        raise UserError("--s-min and --s-max must be positive with --s-min < --s-max, and --per-decade at least 1")
    if folds is not None and folds < 2:
        raise UserError("--folds must be at least 2")
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        if run.n_labels < 2:
            raise UserError(f"run '{run.name}' has {run.n_labels} label(s): tune-s needs at least 2")
        info = open_pool_of(run)
        _, x, y = labeled_arrays(run, info)
        tree, meta = _checkpoint(run)
        config = run.config if folds is None else {**run.config, "tune": {**run.config.get("tune", {}), "folds": int(folds)}}
        mode = "loocv" if run.config["s"] == "loocv" else "auto"
        grid = tuning.log_grid(s_min, s_max, per_decade)
        with reporter.progress(f"validation error at {len(grid)} values of s", None):
            curve = tuning.validation_curve(
                config, x, y, grid, s_prev=_last_s(run, meta), mode=mode,
                params=None if tree is None else tree["params"], tangent=None if tree is None else tree["tangent"],
            )
        if plot:
            out = Path(out) if out else run.path / "plots" / f"tune-s-round-{run.round:04d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            title = f"{run.name}: {curve.cv_label} on {run.n_labels} labels (round {run.round})"
            atomic.write_bytes_atomic(out, tuning.plot_png(curve, title))
        best = int(np.argmin(curve.cv))
        record = {"command": "tune-s", "round": run.round, "labels": run.n_labels, "s": curve.choice.s, "mode": mode,
                  "cv_loss": curve.choice.cv_loss, "grid_best_s": float(grid[best]), "grid_best_cv": float(curve.cv[best]),
                  "local_minima": curve.local_minima(), "s_model": (meta or {}).get("s"), "plot": str(out) if plot else None}
        rundir.append_history(run, record)
    return {**record, "curve": curve.to_dict()}


def history(name: str) -> list[dict]:
    return rundir.read_history(rundir.open_run(name))


def predict_rows(run: rundir.Run, x: np.ndarray) -> np.ndarray:
    tree, meta = _checkpoint(run)
    if tree is None:
        raise UserError(f"run '{run.name}' has no trained model yet: run `alloop train {run.name}`")
    return fitting.predict(run.config, tree["params"], x, meta.get("target"))


