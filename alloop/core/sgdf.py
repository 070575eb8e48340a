"""SGDF: stochastic gradient descent that carries the regularity tangent θ̇ = dθ*/ds (paper §3.5).

The tangent is the forward-mode derivative of the *whole* optimizer step with respect to
(θ, optimizer state, s) along (θ̇, state tangent, 1): substitute θ + θ̇ ds into every step
(method.md, dual-number form). Any optax optimizer therefore works unchanged, and for plain SGD
this is exactly θ̇ ← θ̇ − η (H_B θ̇ + ρ_B). The integer leaves of an optimizer state (step counts)
carry no tangent.

``tangent_every = k`` iterates the tangent on every k-th step only (plain steps in between, the
tangent held). The fixed point H θ̇ = −ρ does not depend on how often it is iterated, so this trades
convergence speed of the tangent for training cost. With ``tangent_scaled`` each tangent step's
increment is multiplied by c = min(k, lr_peak / lr_t): it stands for the k steps it replaces, but
never takes a larger step than the optimizer's peak learning rate (at which training itself was
stable), so early on c = 1 and once the schedule has decayed c = k. That converges faster where the
tangent is limited by convergence (large data), at the price of k times the minibatch noise where it
is limited by noise (small data): see benchmarks/README.md. ``tangent_every = 0`` trains without a
tangent.

An epoch is one jitted ``lax.scan`` over minibatches of a seeded permutation; the epoch index is
folded into the seed, so training from a checkpoint at epoch e repeats an uninterrupted run.

``fit(..., chunk=c)`` runs c epochs per call of one compiled loop (``make_epochs``): the per-epoch
reports come back together, and the host's per-epoch overhead (dispatch, reading the loss and the
tangent's norm) is paid once per chunk. With ``stop=StopRule(...)`` it also checks, at the end of
every chunk, whether training has converged: the gradient of the objective on all rows and the
tangent's residual at its fixed point are below the rule's tolerances (``converged``); then it stops
before the epoch budget, which stays the cap. Chunks end at multiples of c counted from epoch 0, so
a training resumed at such an epoch takes the same steps and makes the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alloop.core import parallel
from alloop.core.objective import Data, Problem, grad_and_tangent, value_and_grad


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Stored in a run's config as given."""

    optimizer: str = "adam"  # "adam" | "sgd"
    lr: float = 1e-2
    momentum: float = 0.0  # sgd only
    epochs: int = 100
    batch_size: int = 64
    schedule: str = "cosine"  # "cosine" | "constant" | "exponential"
    final_lr: float = 0.01  # end of schedule, as a fraction of lr
    seed: int = 0
    tangent_every: int = 1
    tangent_scaled: bool = (
        False  # with tangent_every > 1: scale the tangent's steps (module docstring)
    )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class TrainState(NamedTuple):
    """Everything training carries: θ, θ̇, the optimizer state and its tangent, the step count."""

    params: Any
    tangent: Any
    opt_state: Any
    opt_tangent: list  # tangents of the optimizer state's floating leaves, in leaf order
    step: jax.Array


class StopRule(NamedTuple):
    """When SGDF has trained enough (checked every chunk of epochs, on all rows):

    - ``grad_tol``: ‖∇f(θ)‖ / n, the gradient of the mean objective (the loss per row plus s R / n),
      at most this;
    - ``residual_tol``: ‖C θ̇ + ρ‖ / ‖ρ‖ at most this, C the problem's curvature (the Hessian, or
      Gauss-Newton plus damping): the tangent is at the fixed point its iteration converges to.

    Both are relative to the data's scale when the features and targets are standardized (as
    ``training.fit`` does). At the defaults, a linear and an MLP run on bench_round_trip.py's data
    stopped at 15% and 65% of their budgets with the test error within 0.01% of training the whole
    budget.
    """

    grad_tol: float = 1e-3
    residual_tol: float = 1e-3


class EpochReport(NamedTuple):
    epoch: int
    loss: float
    tangent_norm: float


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / min(batch_size, n))


def make_schedule(cfg: TrainConfig, total_steps: int) -> Callable:
    total_steps = max(total_steps, 1)
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, total_steps, alpha=cfg.final_lr)
    if cfg.schedule == "exponential":
        return optax.exponential_decay(cfg.lr, total_steps, cfg.final_lr)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer for ``cfg``. Adam gets eps_root > 0: the tangent of √v is infinite at v =
    0."""
    lr = make_schedule(cfg, total_steps)
    if cfg.optimizer == "sgd":
        return optax.sgd(lr, momentum=cfg.momentum or None)
    if cfg.optimizer == "adam":
        return optax.adam(lr, eps_root=1e-16)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)


def split_state(opt_state):
    """Split an optimizer state into its floating leaves (differentiated) and the rest."""
    leaves, treedef = jax.tree_util.tree_flatten(opt_state)
    mask = tuple(_is_float(x) for x in leaves)
    floats = [x for x, m in zip(leaves, mask) if m]
    others = [x for x, m in zip(leaves, mask) if not m]
    return floats, others, (treedef, mask)


def merge_state(floats, others, layout):
    treedef, mask = layout
    fi, oi = iter(floats), iter(others)
    return jax.tree_util.tree_unflatten(treedef, [next(fi) if m else next(oi) for m in mask])


def zeros_like_tree(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def init_state(params, opt: optax.GradientTransformation, tangent=None) -> TrainState:
    """A fresh optimizer around ``params``; warm-started from ``tangent`` when given (else θ̇ =
    0)."""
    opt_state = opt.init(params)
    floats, _, _ = split_state(opt_state)
    tangent = (
        zeros_like_tree(params) if tangent is None else jax.tree_util.tree_map(jnp.asarray, tangent)
    )
    return TrainState(
        params, tangent, opt_state, [jnp.zeros_like(x) for x in floats], jnp.zeros((), jnp.int32)
    )


def _plain_step(problem, opt, n, state: TrainState, batch: Data, s):
    loss, g = value_and_grad(problem, state.params, s, batch, n)
    updates, opt_state = opt.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), loss


def _s_direction(s):
    """The tangent of s itself: 1, so that θ̇ = dθ/ds (tests set it to 0 to drop ρ on purpose)."""
    return jnp.ones_like(s)


def sgdf_step(problem, opt, n, state: TrainState, batch: Data, s, scale=1.0):
    """One optimizer step and its forward derivative along (θ̇, state tangent, ds = 1).

    By the chain rule this is the jvp of the whole step: the gradient and its tangent ġ = C θ̇ + ρ_B
    come from ``grad_and_tangent`` (one pass), and only the optimizer update is differentiated here.
    ``scale`` multiplies the tangent's increment (1: the exact derivative of the step).
    """
    s = jnp.asarray(s, jnp.float32)
    loss, g, gdot = grad_and_tangent(
        problem, state.params, state.tangent, s, _s_direction(s), batch, n
    )
    floats, others, layout = split_state(state.opt_state)

    def update(opt_floats, grads, params):
        updates, new_state = opt.update(grads, merge_state(opt_floats, others, layout), params)
        new_floats, new_others, _ = split_state(new_state)
        return (updates, new_floats), new_others

    (updates, new_floats), (dupdates, opt_tangent), new_others = jax.jvp(
        update, (floats, g, state.params), (state.opt_tangent, gdot, state.tangent), has_aux=True
    )
    params = optax.apply_updates(state.params, updates)
    tangent = jax.tree_util.tree_map(
        lambda t, du: (t + scale * du).astype(t.dtype), state.tangent, dupdates
    )
    opt_state = merge_state(new_floats, new_others, layout)
    return TrainState(params, tangent, opt_state, opt_tangent, state.step + 1), loss


def make_epoch(problem: Problem, opt, n: int, cfg: TrainConfig, devices: int = 1) -> Callable:
    """A jitted ``epoch(state, data, s, key) -> (state, mean loss)``: one pass over a permutation.

    With ``devices > 1`` every minibatch's rows are split over that many local devices (data
    parallel: the state and data are expected replicated, see ``fit``); the result equals one
    device's up to the order of float sums.
    """
    shard = parallel.constrain_rows(devices)
    bs = min(cfg.batch_size, n)
    steps = steps_per_epoch(n, cfg.batch_size)
    pad = steps * bs - n
    every = cfg.tangent_every
    schedule = make_schedule(cfg, cfg.epochs * steps)

    def _tangent_scale(step):
        """min(k, lr_peak / lr_t): k tangent steps' worth, but never a larger step than the peak
        lr."""
        return jnp.minimum(float(every), cfg.lr / jnp.maximum(schedule(step), 1e-30 * cfg.lr))

    def one_step(state, batch, s):
        if every == 0:
            return _plain_step(problem, opt, n, state, batch, s)
        if every == 1:
            return sgdf_step(problem, opt, n, state, batch, s)
        return jax.lax.cond(
            state.step % every == every - 1,
            lambda st: sgdf_step(
                problem,
                opt,
                n,
                st,
                batch,
                s,
                _tangent_scale(st.step) if cfg.tangent_scaled else 1.0,
            ),
            lambda st: _plain_step(problem, opt, n, st, batch, s),
            state,
        )

    def epoch(state, data: Data, s, key):
        perm = jax.random.permutation(key, n)
        idx = jnp.concatenate([perm, perm[:pad]]).reshape(steps, bs)

        def body(st, bidx):
            batch = shard(Data(data.x[bidx], data.y[bidx], data.w[bidx]))
            return one_step(st, batch, s)

        state, losses = jax.lax.scan(body, state, idx)
        return state, jnp.mean(losses)

    return jax.jit(epoch)


def make_fit_many(problem: Problem, n: int, cfg: TrainConfig, stacked: bool = False) -> Callable:
    """A jitted ``fit_many(params, data, weights, s) -> stacked θ``: m trainings at once (vmapped).

    Training i minimizes Σ_j weights[i, j] L_j + s[i] R from ``params`` with a fresh optimizer for
    ``cfg.epochs`` epochs of ``cfg.batch_size`` rows, without a tangent: every (fold, s) pair of a
    grid search in one compiled call (all see the same minibatches). ``data`` has ``n`` rows; its
    own weights are ignored (each training has its row of ``weights``). ``stacked``: ``params`` has
    a leading axis, one start per training (warm starts), instead of one start shared by all.
    """
    cfg = TrainConfig.from_dict({**asdict(cfg), "tangent_every": 0})
    opt = make_optimizer(cfg, cfg.epochs * steps_per_epoch(n, cfg.batch_size))
    epoch = make_epoch(problem, opt, n, cfg)

    def one(params, x, y, w, s):
        state = init_state(params, opt)
        data = Data(x, y, w)
        return jax.lax.fori_loop(
            0, cfg.epochs, lambda e, st: epoch(st, data, s, epoch_key(cfg.seed, e))[0], state
        ).params

    return jax.jit(
        lambda params, data, weights, s: jax.vmap(
            one, in_axes=(0 if stacked else None, None, None, 0, 0)
        )(params, data.x, data.y, weights, s)
    )


def convergence(problem: Problem, params, tangent, s, data: Data):
    """(‖∇f‖ / n, ‖C θ̇ + ρ‖ / ‖ρ‖) on all rows: the quantities ``StopRule`` bounds (traceable).

    One full-batch pass of ``grad_and_tangent`` gives g and ġ = C θ̇ + ρ / n (what every SGDF step
    uses, on all rows); a second with θ̇ = 0 gives ρ / n.
    """
    n = data.x.shape[0]
    one = jnp.ones((), jnp.float32)
    _, g, gdot = grad_and_tangent(problem, params, tangent, s, one, data, n)
    _, _, rho = grad_and_tangent(problem, params, zeros_like_tree(tangent), s, one, data, n)
    norm = lambda t: jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(t)))  # noqa: E731
    return norm(g), norm(gdot) / jnp.maximum(norm(rho), jnp.finfo(jnp.float32).tiny)


def _scaled_norm(tree) -> jax.Array:
    """√Σx² in float32 without overflowing the squares (scaled by the largest |x|); non-finite stays
    non-finite."""
    leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)]
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in leaves]))
    safe = jnp.where(m > 0, m, 1.0)
    return safe * jnp.sqrt(sum(jnp.sum(jnp.square(x / safe)) for x in leaves))


def make_epochs(
    problem: Problem, opt, n: int, cfg: TrainConfig, chunk: int, devices: int = 1
) -> Callable:
    """A jitted ``epochs(state, data, s, first, count) -> (state, losses, norms, (grad norm,
    residual))``.

    Runs epochs first, ..., first + count - 1 (count <= chunk) in one compiled loop, each exactly as
    ``make_epoch``'s (same keys, same steps); ``losses`` and ``norms`` (the tangent's norm after
    each epoch) have ``chunk`` entries, the first ``count`` filled. The last pair is ``convergence``
    at the end.
    """
    one_epoch = make_epoch(problem, opt, n, cfg, devices).__wrapped__

    def epochs(state, data, s, first, count):
        def body(i, carry):
            st, losses, norms = carry
            st, loss = one_epoch(
                st, data, s, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), first + i)
            )
            return st, losses.at[i].set(loss), norms.at[i].set(_scaled_norm(st.tangent))

        zeros = jnp.zeros((chunk,), jnp.float32)
        state, losses, norms = jax.lax.fori_loop(0, count, body, (state, zeros, zeros))
        return state, losses, norms, convergence(problem, state.params, state.tangent, s, data)

    return jax.jit(epochs)


def epoch_key(seed: int, epoch: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), epoch)


def tree_norm(tree) -> float:
    """√Σx² over the leaves, in float64 on the host: no op to compile, and no overflow of the
    squares for a tangent near float32's range (which would read as non-finite)."""
    return float(
        np.sqrt(
            sum(
                np.sum(np.square(np.asarray(x), dtype=np.float64))
                for x in jax.tree_util.tree_leaves(tree)
            )
        )
    )


def fit(
    problem: Problem,
    data: Data,
    s: float,
    cfg: TrainConfig,
    params=None,
    tangent=None,
    state: TrainState | None = None,
    start_epoch: int = 0,
    on_epoch: Callable[[TrainState, EpochReport], None] | None = None,
    devices: int = 1,
    chunk: int = 1,
    stop: StopRule | None = None,
) -> tuple[TrainState, list[EpochReport]]:
    """Train for ``cfg.epochs`` epochs with SGDF and return the final state and per-epoch reports.

    Start from ``state`` (resuming at ``start_epoch``), else from ``params``/``tangent`` (warm start
    with a fresh optimizer), else from the model's initialization with seed ``cfg.seed``.
    ``devices``: split every minibatch over that many local devices (``make_epoch``).

    ``chunk > 1``: run up to that many epochs per compiled call (``make_epochs``), chunks ending at
    multiples of ``chunk``; ``on_epoch`` then gets every epoch's report after its chunk, with the
    state at the chunk's end. ``stop``: end early, at the end of a chunk, once ``stop`` is met (the
    reports then stop there: ``len(reports)`` tells how many epochs ran).
    """
    n = int(data.x.shape[0])
    opt = make_optimizer(cfg, cfg.epochs * steps_per_epoch(n, cfg.batch_size))
    if state is None:
        if params is None:
            params = problem.model.init(jax.random.PRNGKey(cfg.seed))
        state = init_state(jax.tree_util.tree_map(jnp.asarray, params), opt, tangent)
    epoch_fn = make_epoch(problem, opt, n, cfg, devices)
    s_arr = jnp.asarray(s, jnp.float32)
    if devices > 1:
        state, data, s_arr = parallel.replicate((state, data, s_arr), devices)
    reports = []
    if chunk > 1 or stop is not None:
        return _fit_chunked(
            problem,
            opt,
            n,
            cfg,
            state,
            data,
            s_arr,
            start_epoch,
            on_epoch,
            devices,
            max(chunk, 1),
            stop,
        )
    for e in range(start_epoch, cfg.epochs):
        state, loss = epoch_fn(state, data, s_arr, epoch_key(cfg.seed, e))
        rep = EpochReport(e, float(loss), tree_norm(state.tangent))
        reports.append(rep)
        if on_epoch is not None:
            on_epoch(state, rep)
    return state, reports


def _fit_chunked(
    problem, opt, n, cfg, state, data, s_arr, start_epoch, on_epoch, devices, chunk, stop
):
    epochs_fn = make_epochs(problem, opt, n, cfg, chunk, devices)
    reports = []
    e = start_epoch
    while e < cfg.epochs:
        count = min(chunk - e % chunk, cfg.epochs - e)  # end at the next multiple of chunk
        state, losses, norms, (gnorm, resid) = epochs_fn(
            state, data, s_arr, jnp.asarray(e, jnp.int32), jnp.asarray(count, jnp.int32)
        )
        losses, norms = np.asarray(losses, np.float64), np.asarray(norms, np.float64)
        for i in range(count):
            rep = EpochReport(e + i, float(losses[i]), float(norms[i]))
            reports.append(rep)
            if on_epoch is not None:
                on_epoch(state, rep)
        e += count
        if stop is not None and float(gnorm) <= stop.grad_tol and float(resid) <= stop.residual_tol:
            break
    return state, reports


def _still_growing(tail: np.ndarray) -> bool:
    """More than 2x over the tail, or more than 1.25x at a rate that is not slowing down (a
    converging tangent approaches its value ever more slowly; one iterated on negative curvature
    grows geometrically)."""
    if not np.all(tail > 0):
        return False
    growth = tail[-1] / tail[0]
    mid = len(tail) // 2
    early = np.log(tail[mid] / tail[0]) / mid
    late = np.log(tail[-1] / tail[mid]) / (len(tail) - 1 - mid)
    return bool(growth > 2.0 or (growth > 1.25 and early > 0 and late >= 0.7 * early))


def tangent_warnings(reports: list[EpochReport], residual: float | None = None) -> list[str]:
    """Signs that the tangent is not to be trusted: non-finite values, a norm still growing fast, a
    large residual."""
    out = []
    norms = np.array([r.tangent_norm for r in reports])
    losses = np.array([r.loss for r in reports])
    if norms.size and not np.all(np.isfinite(norms)):
        out.append(
            "the regularity tangent became non-finite during training (try --curvature "
            "gauss-newton or a smaller --lr)"
        )
    elif norms.size >= 10 and _still_growing(norms[-max(len(norms) // 5, 3) :]):
        tail = norms[-max(len(norms) // 5, 3) :]
        out.append(
            f"the regularity tangent's norm still grew {tail[-1] / tail[0]:.1f}x over the "
            f"last {len(tail)} epochs (negative curvature? try --curvature gauss-newton or "
            "more --epochs)"
        )
    if losses.size and not np.all(np.isfinite(losses)):
        out.append("the training loss became non-finite (try a smaller --lr)")
    if residual is not None and (not np.isfinite(residual) or residual > 0.5):
        out.append(
            f"the tangent's relative residual ||Hθ̇+ρ||/||ρ|| is {residual:.3g} (> 0.5): SLD "
            "scores are unreliable"
        )
    return out
