"""From a run's config and labeled arrays to a trained model, its tangent and its metrics.

No files here: the caller reads labels and rows and passes arrays in. This is the bridge between the
run's typed configuration (``alloop.config.RunConfig``) and the pure core. Every function takes a
RunConfig or its JSON form (``as_config``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alloop.config import ModelSpec, RunConfig, as_config
from alloop.core import (
    groups,
    losses,
    models,
    objective,
    regularizers,
    second_order,
    sgdf,
    tangents,
)
from alloop.core.objective import Problem, default_curvature
from alloop.core.scorers import residual_noise
from alloop.training import classmap, grouping

MIN_STEPS = 2000  # at least this many optimizer steps per training, however few the labels
BOOTSTRAP_STEPS = 600


def model_spec(
    kind: str = "linear",
    *,
    degree: int = 3,
    hidden=(64, 64),
    activation: str = "tanh",
    curvature: str | None = None,
    damping: float | None = None,
    **extra,
) -> ModelSpec:
    """A model as ``init`` options describe it, with the curvature (and damping) its kind needs unless told."""
    default, default_damping = (
        default_curvature(kind) if kind in ("linear", "poly", "mlp") else ("hessian", 0.0)
    )
    damping = default_damping if damping is None else damping
    return ModelSpec(
        kind,
        int(degree),
        tuple(int(h) for h in hidden),
        activation,
        curvature or default,
        float(damping),
        extra,
    )


def loss_for(config: RunConfig) -> losses.Loss:
    """Squared error for regression, softmax cross-entropy for classification."""
    return (
        losses.softmax_cross_entropy
        if as_config(config).task == "classification"
        else losses.squared
    )


def build_model(config: RunConfig) -> models.Model:
    config = as_config(config)
    return models.make_model(config.model.to_json(), len(config.pool.features), config.n_outputs)


def standardizer(config: RunConfig) -> models.Standardizer:
    st = as_config(config).standardizer
    return models.fit_standardizer(st["mean"], st["std"])


def build_problem(config: RunConfig, params, anchor=None) -> Problem:
    """The objective of the run: model, loss, regularizer over the weights (or all params), curvature.

    ``anchor = (θ0, θ̇0, s0)`` is the base model of a run made with ``init --base``.
    """
    config = as_config(config)
    m = config.model
    reg_kind = config.regularizer
    full = params  # grouped: eq 99 on the groups, the run's regularizer on the shared part
    params = params["shared"] if groups.is_grouped(full) else params
    if reg_kind == "inherited-anchor":
        if anchor is None:
            raise ValueError("an inherited-anchor run needs its base model (θ0, θ̇0, s0)")
        reg = regularizers.inherited_anchor(*anchor)
    elif reg_kind == "l2":
        reg = regularizers.l2_weights(params)
    elif reg_kind == "l2-all":
        reg = regularizers.l2(jax.tree_util.tree_map(jnp.ones_like, params))
    else:
        raise ValueError(f"unknown regularizer {reg_kind!r}")
    if groups.is_grouped(full):
        reg = groups.hierarchy(full, reg)
    return Problem(
        build_model(config),
        loss_for(config),
        reg,
        standardizer(config),
        m.curvature,
        float(m.damping),
    )


def train_config(config: RunConfig, n: int, **overrides) -> sgdf.TrainConfig:
    """The run's TrainConfig, with the epoch count raised so that training takes at least MIN_STEPS steps."""
    train = as_config(config).train
    cfg = sgdf.TrainConfig.from_dict(
        {**train, **{k: v for k, v in overrides.items() if v is not None}}
    )
    per_epoch = sgdf.steps_per_epoch(n, cfg.batch_size)
    min_steps = int(train.get("min_steps", MIN_STEPS))
    epochs = max(cfg.epochs, math.ceil(min_steps / per_epoch))
    return sgdf.TrainConfig.from_dict({**cfg.to_dict(), "epochs": epochs})


CHECK_STEPS = (
    100  # SGDF checks convergence about every this many steps (and at least every 10 epochs' worth)
)


def convergence_rule(
    config: RunConfig, cfg: sgdf.TrainConfig, n: int, given_epochs: bool = False
) -> tuple[int, sgdf.StopRule | None]:
    """(epochs per chunk, stop rule) of a run's SGDF training: train as long as the data need, the epoch count the cap.

    Training stops at the end of the first chunk where the gradient and the tangent's residual are
    below ``sgdf.StopRule``'s tolerances (run config ``train``: ``grad_tol``, ``residual_tol``;
    ``converge: false`` always trains the whole budget, and so does an epoch count given for this
    training, ``alloop train --epochs N``). A check costs about one pass over the labels, so it runs
    every max(CHECK_STEPS steps, 10 epochs).
    """
    train = as_config(config).train
    chunk = max(math.ceil(CHECK_STEPS / sgdf.steps_per_epoch(n, cfg.batch_size)), 10)
    if given_epochs or not train.get("converge", True):
        return chunk, None
    default = sgdf.StopRule()
    return chunk, sgdf.StopRule(
        float(train.get("grad_tol", default.grad_tol)),
        float(train.get("residual_tol", default.residual_tol)),
    )


def target_stats(config: RunConfig, y) -> tuple[list, list] | None:
    """Mean and scale of each regression target over the labels (None for classification).

    Training sees standardized targets, so a default s and learning rate mean the same thing on
    every dataset; predictions are mapped back. A constant target (or a single label) gets scale 1.
    """
    if as_config(config).task == "classification":
        return None
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    mean = y.mean(0) if len(y) else np.zeros(y.shape[1])
    std = y.std(0) if len(y) > 1 else np.ones(y.shape[1])
    return [float(v) for v in mean], [float(v) if v > 1e-12 else 1.0 for v in std]


def make_targets(config: RunConfig, y, stats=None) -> np.ndarray:
    """Labels as the loss wants them: (n, k) float32 standardized by ``stats`` (regression), or class indices."""
    config = as_config(config)
    if config.task == "classification":
        return classmap.to_indices(list(config.classes), y)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if stats is not None:
        y = (y - np.asarray(stats[0])) / np.asarray(stats[1])
    return y.astype(np.float32)


@dataclass
class FitResult:
    params: Any
    tangent: Any
    state: sgdf.TrainState
    residual: float
    warnings: list[str]
    train_loss: float
    epochs: int
    seconds: float
    noise: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    target: tuple[list, list] | None = (
        None  # regression: mean and scale the targets were standardized with
    )


def fit(
    config: RunConfig,
    x: np.ndarray,
    y: np.ndarray,
    params=None,
    tangent=None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    epochs: int | None = None,
    resume: tuple[sgdf.TrainState, int] | None = None,
    on_checkpoint: Callable[[sgdf.TrainState, int], None] | None = None,
    checkpoint_every: int | None = None,
    anchor=None,
    target=None,
    devices: int = 1,
) -> FitResult:
    """Train with SGDF on the labeled rows (warm start from ``params``/``tangent``) and solve the tangent.

    ``resume=(state, epoch)`` continues an interrupted training exactly where it stopped;
    ``on_checkpoint(state, epochs_done)`` is called every ``checkpoint_every`` epochs.
    ``anchor`` is the base model of an inherited run, ``target`` fixed target statistics (an
    inherited run keeps its base's). ``config.trainer`` other than ``sgdf`` trains full-batch
    to convergence with a second-order method and solves the tangent there (paper §3.8).
    ``devices``: SGDF splits every minibatch over that many local devices (data-parallel training).
    """
    t0 = time.perf_counter()
    config = as_config(config)
    model = build_model(config)
    init = model.init(jax.random.PRNGKey(config.seed))
    problem = build_problem(config, init, anchor)
    tstats = target_stats(config, y) if target is None else target
    data = objective.make_data(x, make_targets(config, y, tstats))
    if grouping.spec_of(config) and resume is None:
        start = params if params is not None else init
        params, tangent = grouping.start(config, start, tangent, config.s, x, data.y)
    cfg = train_config(config, len(x), epochs=epochs)
    chunk, stop = convergence_rule(config, cfg, len(x), given_epochs=epochs is not None)
    every = (
        checkpoint_every or max(math.ceil(cfg.epochs // 10 / chunk), 1) * chunk
    )  # checkpoints fall on chunk ends
    chunk = math.gcd(chunk, every)

    def callback(st, rep):
        if on_epoch is not None:
            on_epoch(rep.epoch + 1, cfg.epochs, rep.loss)
        done = rep.epoch + 1
        if on_checkpoint is not None and done % every == 0 and done < cfg.epochs:
            on_checkpoint(st, done)

    state, start = (None, 0) if resume is None else resume
    trainer = config.trainer
    if trainer == "sgdf":
        state, reports = sgdf.fit(
            problem,
            data,
            float(config.s),
            cfg,
            params=params if params is not None else init,
            tangent=tangent,
            state=state,
            start_epoch=start,
            on_epoch=callback,
            devices=devices,
            chunk=chunk,
            stop=stop,
        )
    else:
        so = second_order.fit(
            problem, data, float(config.s), params if params is not None else init, method=trainer
        )
        state = sgdf.init_state(
            jax.tree_util.tree_map(jnp.asarray, so.params), sgdf.make_optimizer(cfg, 1), so.tangent
        )
        reports = []
    params, tangent = state.params, state.tangent
    method = config.tangent
    if method == "exact":
        tangent = tangents.exact(problem, params, config.s, data).tangent
    elif method == "cg":
        tangent = tangents.cg(problem, params, config.s, data, x0=tangent).tangent
    residual = tangents.relative_residual(problem, params, tangent, float(config.s), data)
    warn = sgdf.tangent_warnings(reports, residual)
    noise = (
        residual_noise(problem, params, data.x, data.y)
        if problem.loss.name == "squared"
        else np.ones(1, np.float32)
    )
    loss = float(np.mean(np.asarray(objective.per_example_loss(problem, params, data.x, data.y))))
    return FitResult(
        jax.tree_util.tree_map(np.asarray, params),
        jax.tree_util.tree_map(np.asarray, tangent),
        state,
        residual,
        warn,
        loss,
        start + len(reports) if trainer == "sgdf" else cfg.epochs,
        time.perf_counter() - t0,
        noise,
        tstats,
    )


_APPLY: dict = {}  # the jitted apply of each model, by what builds it


def apply_fn(config: RunConfig):
    """The run's model's ``apply``, jitted once per process: a fresh ``jax.jit`` per call (as
    ``predict`` had) compiled anew every time, which cost more than the prediction."""
    config = as_config(config)
    key = json.dumps(
        [config.model.to_json(), len(config.pool.features), config.n_outputs], sort_keys=True
    )
    if key not in _APPLY:
        _APPLY[key] = jax.jit(build_model(config).apply)
    return _APPLY[key]


def predict(config: RunConfig, params, x: np.ndarray, target=None) -> np.ndarray:
    """Model outputs for raw feature rows: regression values in the target's units, or class logits."""
    apply = apply_fn(config)
    out = np.asarray(apply(params, standardizer(config), jnp.asarray(x, jnp.float32)), np.float64)
    if target is not None:
        out = out * np.asarray(target[1]) + np.asarray(target[0])
    return out


def metrics(
    config: RunConfig, params, x: np.ndarray, y: np.ndarray, prefix: str = "test_", target=None
) -> dict:
    """RMSE and MAE (regression, in the target's units) or accuracy, log loss, macro-F1 on labeled rows."""
    config = as_config(config)
    out = predict(config, params, x, target)
    if config.task == "classification":
        return {
            prefix + k: v
            for k, v in classification_metrics(
                out, make_targets(config, y), len(config.classes)
            ).items()
        }
    err = out - np.asarray(y, np.float64).reshape(out.shape)
    return {
        prefix + "rmse": float(np.sqrt(np.mean(err**2))),
        prefix + "mae": float(np.mean(np.abs(err))),
    }


def classification_metrics(logits: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Accuracy, log loss and macro-F1 from logits and class indices."""
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1), np.float64)
    pred = logp.argmax(1)
    f1 = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        if denom:
            f1.append(2 * tp / denom)
    return {
        "accuracy": float(np.mean(pred == y)),
        "log_loss": float(-np.mean(logp[np.arange(len(y)), y])),
        "macro_f1": float(np.mean(f1)) if f1 else 0.0,
    }


def bootstrap_members(
    config: RunConfig, x: np.ndarray, y: np.ndarray, k: int, seed: int, anchor=None, target=None
) -> list:
    """K models fitted without a tangent on bootstrap resamples of the labels (query by committee)."""
    config = as_config(config)
    model = build_model(config)
    rng = np.random.default_rng(seed)
    members = []
    targets = make_targets(config, y, target_stats(config, y) if target is None else target)
    for i in range(k):
        idx = rng.integers(0, len(x), len(x))
        init = model.init(jax.random.PRNGKey(seed + 1000 + i))
        problem = build_problem(config, init, anchor)
        data = objective.make_data(x[idx], targets[idx])
        steps = min(
            BOOTSTRAP_STEPS, int(config.train.get("min_steps", MIN_STEPS))
        )  # never longer than a real training
        short = config.replace(
            train={**config.train, "min_steps": steps, "tangent_every": 0, "seed": seed + i}
        )
        cfg = train_config(short, len(x))
        state, _ = sgdf.fit(problem, data, float(config.s), cfg, params=init)
        members.append(state.params)
    return members


def checkpoint_tree(state: sgdf.TrainState, params, tangent) -> dict:
    """What a checkpoint stores: θ, θ̇ and the optimizer state with its tangent."""
    return {
        "params": jax.tree_util.tree_map(np.asarray, params),
        "tangent": jax.tree_util.tree_map(np.asarray, tangent),
        "opt_state": jax.tree_util.tree_map(np.asarray, state.opt_state),
        "opt_tangent": [np.asarray(t) for t in state.opt_tangent],
        "step": np.asarray(state.step),
    }


def state_from_tree(tree: dict) -> sgdf.TrainState:
    """The TrainState stored by ``checkpoint_tree`` (for resuming an interrupted training)."""
    to_jnp = lambda t: jax.tree_util.tree_map(jnp.asarray, t)  # noqa: E731
    return sgdf.TrainState(
        to_jnp(tree["params"]),
        to_jnp(tree["tangent"]),
        to_jnp(tree["opt_state"]),
        [jnp.asarray(t) for t in tree["opt_tangent"]],
        jnp.asarray(tree["step"]),
    )


def checkpoint_like(config: RunConfig) -> dict:
    """A tree with the checkpoint's structure, built in code (checkpoints are never unpickled).

    Its leaves are zeros of the right shapes and dtypes, traced with ``jax.eval_shape``: nothing is
    compiled, which took up to seconds per command that loads a checkpoint.
    """

    def build():
        params = build_model(config).init(jax.random.PRNGKey(0))
        opt = sgdf.make_optimizer(sgdf.TrainConfig.from_dict(as_config(config).train), 1)
        return params, sgdf.init_state(params, opt)

    params, state = jax.tree_util.tree_map(
        lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(build)
    )
    return checkpoint_tree(state, params, params)
