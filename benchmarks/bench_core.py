"""What the regularity tangent costs: SGDF vs plain training, SLD scoring vs plain prediction.

Every figure is a ratio of two timings taken in this one process, interleaved round by round (so a
machine that slows down or speeds up affects both sides alike), after a warm-up that compiles each
function ahead of time. Training: every configuration (plain, and SGDF with each tangent_every k)
is trained side by side, one epoch of each in turn, and the ratio of each epoch to the plain epoch
of the same round is taken; reported is its median over the epochs, in wall-clock time and in
process CPU time (the CPU figure is steadier on a machine shared with other work), and each side's
rows per second.

Also reported: how good the tangent is at the end of a training with the same settings: the cosine
to the closed-form ridge tangent (linear model), or to a conjugate-gradient solve of the same
curvature at the final θ (MLP; the default curvature, docs/curvature.md).

    # the full benchmark (a few minutes on 2 cores)
    python benchmarks/bench_core.py
    # smaller sizes, a smoke run (well under a minute)
    python benchmarks/bench_core.py --quick
    # an accelerator's minibatch (README: the figures on one H200)
    python benchmarks/bench_core.py --batch 4096

This is a measurement, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from alloop.core import losses, models, objective, regularizers, scorers, sgdf, tangents

TARGETS = {"sgdf_linear": 1.25, "sgdf_mlp": 1.5, "sld_linear": 1.1, "sld_mlp": 3.0, "cosine": 0.999}


class Sizes(NamedTuple):
    n: int  # training rows
    p: int  # features
    hidden: tuple[int, ...]
    batch: int
    epochs_linear: int
    epochs_mlp: int
    pool: int  # rows scored for SLD
    pool_batch: int
    rounds: int  # interleaved scoring rounds
    cg_iters: int


FULL = Sizes(100_000, 100, (256, 256), 256, 10, 10, 1_000_000, 65_536, 5, 400)
QUICK = Sizes(5_000, 100, (64, 64), 256, 20, 4, 100_000, 16_384, 3, 100)


class Case(NamedTuple):
    name: str
    problem: objective.Problem
    data: objective.Data
    s: float


# --- problems --------------------------------------------------------------------------------


def _features(rng, n, p):
    """Correlated features (a random rotation of scales spanning 10x): a curvature with condition
    ~100."""
    mix = np.linalg.qr(rng.normal(size=(p, p)))[0]
    return ((rng.normal(size=(n, p)) * np.geomspace(1.0, 0.1, p)) @ mix + 3.0).astype(np.float32)


def _standardized(y):
    return ((y - y.mean(0)) / y.std(0)).astype(np.float32)


def linear_case(sz: Sizes, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    x = _features(rng, sz.n, sz.p)
    stats = models.fit_standardizer(x.mean(0), x.std(0))
    z = (x - np.asarray(stats.mean)) / np.asarray(stats.scale)
    y = _standardized(z @ rng.normal(size=(sz.p, 1)) + 2.0 * rng.normal(size=(sz.n, 1)))
    model = models.linear(sz.p, 1)
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(model.init(None)),
        stats,
        *objective.default_curvature("linear"),
    )
    return Case("linear", prob, objective.make_data(x, y), 1.0)


def mlp_case(sz: Sizes, seed=0) -> Case:
    """A tanh MLP on a smooth nonlinear target (a random teacher network plus noise), targets
    standardized."""
    rng = np.random.default_rng(seed)
    x = _features(rng, sz.n, sz.p)
    stats = models.fit_standardizer(x.mean(0), x.std(0))
    teacher = models.mlp(sz.p, 1, hidden=(32,), activation="tanh")
    f = np.asarray(teacher.apply(teacher.init(jax.random.PRNGKey(seed + 1)), stats, x))
    y = _standardized(f / f.std() + 0.3 * rng.normal(size=f.shape))
    model = models.mlp(sz.p, 1, hidden=sz.hidden, activation="tanh")
    p0 = model.init(jax.random.PRNGKey(seed))
    prob = objective.Problem(
        model,
        losses.squared,
        regularizers.l2_weights(p0),
        stats,
        *objective.default_curvature("mlp"),
    )
    return Case(
        "mlp " + "→".join(map(str, (sz.p, *sz.hidden, 1))), prob, objective.make_data(x, y), 1.0
    )


# --- training: timing and accuracy from the same runs ----------------------------------------


class Run(NamedTuple):
    cfg: sgdf.TrainConfig
    epoch: Callable  # compiled ahead of time: no compilation inside the timed region
    state: sgdf.TrainState


def start_run(case: Case, cfg: sgdf.TrainConfig) -> Run:
    n = int(case.data.x.shape[0])
    opt = sgdf.make_optimizer(cfg, cfg.epochs * sgdf.steps_per_epoch(n, cfg.batch_size))
    state = sgdf.init_state(case.problem.model.init(jax.random.PRNGKey(cfg.seed)), opt)
    epoch = sgdf.make_epoch(case.problem, opt, n, cfg)
    compiled = epoch.lower(
        state, case.data, jnp.float32(case.s), sgdf.epoch_key(cfg.seed, 0)
    ).compile()
    return Run(cfg, compiled, state)


def train_interleaved(case: Case, cfgs: dict, epochs: int) -> tuple[dict, dict]:
    """Train every configuration epoch by epoch, in turn (rotating the order), timing each epoch.

    The same calls as ``sgdf.fit`` makes, so the final states are the trainings' results. Returns
    ({name: final state}, {name: per-epoch (wall, cpu) seconds}).
    """
    runs = {k: start_run(case, c) for k, c in cfgs.items()}
    times = {k: [] for k in runs}
    names = list(runs)
    s = jnp.float32(case.s)
    for e in range(epochs):
        for k in names[e % len(names) :] + names[: e % len(names)]:
            r = runs[k]
            c0, t0 = time.process_time(), time.perf_counter()
            state, _ = r.epoch(r.state, case.data, s, sgdf.epoch_key(r.cfg.seed, e))
            jax.block_until_ready(state)
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
            runs[k] = r._replace(state=state)
    return {k: r.state for k, r in runs.items()}, times


def ratios(times: dict, base) -> dict:
    """{name: (median seconds, median of per-round wall ratios to base, same in CPU time)}."""
    b = np.array(times[base])
    out = {}
    for k, t in times.items():
        t = np.array(t)
        out[k] = (
            float(np.median(t[:, 0])),
            float(np.median(t[:, 0] / b[:, 0])),
            float(np.median(t[:, 1] / np.maximum(b[:, 1], 1e-9))),
        )
    return out


def time_scoring(case: Case, params, tangent, sz: Sizes) -> dict:
    rng = np.random.default_rng(5)
    pool = _features(rng, sz.pool, sz.p)
    prob = case.problem
    predict = jax.jit(lambda p, x: prob.model.apply(p, prob.stats, x))
    sld = scorers.sld(prob, params, tangent, np.ones((1,), np.float32))
    fns = {
        "predict": lambda: scorers.pad_apply(lambda x: predict(params, x), pool, sz.pool_batch),
        "sld": lambda: scorers.pad_apply(sld, pool, sz.pool_batch),
    }
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # compile
    for r in range(2 * sz.rounds):
        for k in ["predict", "sld"] if r % 2 == 0 else ["sld", "predict"]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return ratios(times, "predict")


# --- accuracy references -----------------------------------------------------------------------


def _flat(tree) -> np.ndarray:
    return np.asarray(
        ravel_pytree(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree))[0]
    )


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ridge_reference(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """θ* and θ̇ = −(AᵀA + sD)⁻¹Dθ* in float64, A = [standardized X, 1], D = diag(1, …, 1, 0); as
    [w; b]."""
    st = case.problem.stats
    z = (np.asarray(case.data.x, np.float64) - np.asarray(st.mean, np.float64)) / np.asarray(
        st.scale, np.float64
    )
    a = np.c_[z, np.ones(len(z))]
    d = np.diag([1.0] * z.shape[1] + [0.0])
    m = a.T @ a + case.s * d
    theta = np.linalg.solve(m, a.T @ np.asarray(case.data.y, np.float64))
    return theta.ravel(), -np.linalg.solve(m, d @ theta).ravel()


def cg_reference(case: Case, params, x0, tol: float, maxiter: int):
    """CG on C θ̇ = −ρ at ``params`` with C the problem's curvature (float32, jitted, data as an
    argument).

    Curvature-vector products are tangents.hvp: forward-over-reverse on the full objective, not the
    training step's fused path, so the reference is computed independently of what it checks.
    """
    prob = case.problem
    flat0, unravel = ravel_pytree(params)
    s = jnp.float32(case.s)

    @jax.jit
    def solve(flat_params, x, data):
        p = unravel(flat_params)
        mv = lambda v: ravel_pytree(tangents.hvp(prob, p, s, data, unravel(v)))[0]  # noqa: E731
        b = -ravel_pytree(tangents.mixed_derivative(prob, p, s, data))[0]
        r = b - mv(x)
        bnorm = jnp.linalg.norm(b)

        def cond(c):
            _, r, _, rs, i = c
            return (jnp.sqrt(rs) > tol * bnorm) & (i < maxiter)

        def body(c):
            x, r, d, rs, i = c
            ad = mv(d)
            alpha = rs / jnp.vdot(d, ad)
            x, r = x + alpha * d, r - alpha * ad
            rs_new = jnp.vdot(r, r)
            return x, r, r + (rs_new / rs) * d, rs_new, i + 1

        x, r, _, rs, i = jax.lax.while_loop(cond, body, (x, r, r, jnp.vdot(r, r), 0))
        return x, jnp.linalg.norm(mv(x) - b) / bnorm, i

    x, res, it = solve(flat0, ravel_pytree(x0)[0], case.data)
    return np.asarray(x, np.float64), float(res), int(it)


def _config(label: str, optimizer: str, lr: float, epochs: int, batch: int) -> sgdf.TrainConfig:
    """'0' plain, 'k' the tangent on every k-th step, 'ks' the same with scaled tangent steps."""
    k = int(label.rstrip("s"))
    return sgdf.TrainConfig(
        optimizer=optimizer,
        lr=lr,
        epochs=epochs,
        batch_size=batch,
        tangent_every=k,
        tangent_scaled=label.endswith("s"),
    )


def run_training(
    case: Case, kind: str, optimizer: str, lr: float, everies, sz: Sizes, want_reference: bool
) -> list[tuple]:
    epochs = sz.epochs_linear if kind == "linear" else sz.epochs_mlp
    cfgs = {k: _config(k, optimizer, lr, epochs, sz.batch) for k in ("0", *everies)}
    states, times = train_interleaved(case, cfgs, epochs)
    rt = ratios(times, "0")
    acc, ref_text, extra = {}, "", ""
    if kind == "linear":
        theta, ref = ridge_reference(case)
        for k in everies:
            t = states[k].tangent
            acc[k] = cosine(
                np.r_[np.asarray(t["w"], np.float64).ravel(), np.asarray(t["b"], np.float64)], ref
            )
        p = states[everies[0]].params
        err = np.linalg.norm(
            np.r_[np.asarray(p["w"]).ravel(), np.asarray(p["b"])] - theta
        ) / np.linalg.norm(theta)
        ref_text, extra = "closed form", f"θ rel. error {err:.1e}"
    elif want_reference:
        t0 = time.perf_counter()
        ref, res, it = cg_reference(
            case, states[everies[0]].params, states[everies[0]].tangent, 1e-6, sz.cg_iters
        )
        for k in everies:
            acc[k] = cosine(_flat(states[k].tangent), ref)
        ref_text = (
            f"CG, {case.problem.curvature} λ={case.problem.damping:g} ({it} it, res {res:.0e})"
        )
        extra = f"CG {time.perf_counter() - t0:.0f}s"
    rows = [
        (
            case.name,
            optimizer,
            case.problem.curvature,
            k,
            rt[k][0],
            rt[k][1],
            rt[k][2],
            acc.get(k),
            ref_text,
        )
        for k in everies
    ]
    summary = ", ".join(
        f"k={k}: {rt[k][1]:.2f} (cpu {rt[k][2]:.2f})" + (f" cos {acc[k]:.5f}" if k in acc else "")
        for k in everies
    )
    return (
        rows,
        f"{case.name} {optimizer}: plain epoch {rt['0'][0]:.3f}s; {summary}; {extra}",
        states[everies[0]],
        rt,
    )


# --- report ----------------------------------------------------------------------------------


def _ok(value, target, higher_is_better=False) -> str:
    good = value >= target if higher_is_better else value <= target
    return "yes" if good else "**no**"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument(
        "--every",
        default=None,
        help="tangent_every values to measure, e.g. 1,2,3,4 (plain training is always measured)",
    )
    ap.add_argument(
        "--unscaled-only", action="store_true", help="skip the tangent_scaled variants of k > 1"
    )
    ap.add_argument(
        "--batch",
        type=int,
        help="training minibatch rows (default 256; an accelerator wants thousands)",
    )
    ap.add_argument("--pool-batch", type=int, help="rows per scoring call (default 65,536)")
    args = ap.parse_args(argv)
    sz = QUICK if args.quick else FULL
    sz = sz._replace(batch=args.batch or sz.batch, pool_batch=args.pool_batch or sz.pool_batch)
    ks = [int(k) for k in (args.every or ("1,3" if args.quick else "1,2,3,4")).split(",")]
    everies = tuple(str(k) for k in ks) + tuple(
        f"{k}s" for k in ks if k > 1 and not args.unscaled_only
    )
    t_start = time.perf_counter()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.machine()}, sizes {sz}",
        flush=True,
    )

    cases = {"linear": linear_case(sz), "mlp": mlp_case(sz)}
    lrs = {
        ("linear", "adam"): 1e-2,
        ("linear", "sgd"): 0.05,
        ("mlp", "adam"): 1e-3,
        ("mlp", "sgd"): 0.05,
    }
    rows, scoring, speed = [], {}, []
    for kind, case in cases.items():
        for optimizer in ("adam", "sgd"):
            r, line, state, rt = run_training(
                case,
                kind,
                optimizer,
                lrs[kind, optimizer],
                everies,
                sz,
                want_reference=optimizer == "adam",
            )
            rows += r
            speed.append((case.name, optimizer, {k: sz.n / t[0] for k, t in rt.items()}))
            print(f"[{time.perf_counter() - t_start:4.0f}s] {line}", flush=True)
            if optimizer == "adam":
                scoring[kind] = time_scoring(case, state.params, state.tangent, sz)
                sc = scoring[kind]
                print(
                    f"[{time.perf_counter() - t_start:4.0f}s] {case.name} scoring {sz.pool} "
                    f"rows: predict {sc['predict'][0]:.2f}s, SLD/predict {sc['sld'][1]:.2f} (cpu "
                    f"{sc['sld'][2]:.2f})",
                    flush=True,
                )

    print(
        f"\nTotal {time.perf_counter() - t_start:.0f}s. SGDF epoch time / plain epoch time, "
        f"n={sz.n}, batch {sz.batch}, cosine schedule; medians over the epochs of trainings run "
        f"side by side (linear {sz.epochs_linear}, MLP {sz.epochs_mlp} epochs):\n"
    )
    print(
        "| model | optimizer | curvature | tangent_every | SGDF/plain (wall) | SGDF/plain "
        "(CPU) | cosine at end | reference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, opt, curv, k, _, rw, rc, acc, ref in rows:
        label = k if not k.endswith("s") else f"{k[:-1]}, scaled"
        print(
            f"| {name} | {opt} | {curv} | {label} | {rw:.2f} | {rc:.2f} | "
            f"{'' if acc is None else f'{acc:.5f}'} | {ref} |"
        )
    print(
        "\nTargets (Adam; time target met in wall-clock and CPU time, and cosine ≥ 0.999 "
        "at the end):\n"
    )
    for kind, name in (("linear", cases["linear"].name), ("mlp", cases["mlp"].name)):
        target = TARGETS[f"sgdf_{kind}"]
        for _, opt, _, k, _, rw, rc, acc, _ in (r for r in rows if r[0] == name and r[1] == "adam"):  # noqa: B007
            both = max(rw, rc) <= target and acc is not None and acc >= TARGETS["cosine"]
            every = f"{k.rstrip('s')}{' scaled' if k.endswith('s') else ''}"
            print(
                f"- {name}, tangent_every={every}: SGDF/plain {rw:.2f} / {rc:.2f} (≤ "
                f"{target}), cosine {acc:.5f}: {'met' if both else 'not met'}"
            )
    if args.quick:
        print(
            "\n(--quick: sizes and epochs too small for the targets to mean anything; a smoke run)"
        )
    print(
        f"\nSLD scoring time / prediction time ({sz.pool} rows in batches of "
        f"{sz.pool_batch}, both jitted):\n"
    )
    print(
        "| model | predict (s) | SLD (s) | SLD/predict (wall) | SLD/predict (CPU) | target | met |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, sc in scoring.items():
        target = TARGETS[f"sld_{kind}"]
        sld = sc["sld"]
        print(
            f"| {cases[kind].name} | {sc['predict'][0]:.2f} | {sld[0]:.2f} | {sld[1]:.2f} | "
            f"{sld[2]:.2f} | ≤ {target} | {_ok(sld[1], target)} |"
        )
    print(
        f"\nThroughput on {jax.devices()[0].device_kind} (rows per second; training: median "
        f"epoch of {sz.n} rows in batches of {sz.batch}):\n"
    )
    print(
        "| model | optimizer | plain training | "
        + " | ".join(f"SGDF, tangent_every={k}" for k in everies)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(everies))
    for name, opt, rate in speed:
        print(
            f"| {name} | {opt} | {rate['0']:,.0f} | "
            + " | ".join(f"{rate[k]:,.0f}" for k in everies)
            + " |"
        )
    print("\n| model | prediction | SLD scoring |")
    print("|---|---|---|")
    for kind, sc in scoring.items():
        print(
            f"| {cases[kind].name} | {sz.pool / sc['predict'][0]:,.0f} | "
            f"{sz.pool / sc['sld'][0]:,.0f} |"
        )


if __name__ == "__main__":
    main()
