"""The floor of SGDF's cost on an MLP: the flops XLA compiles for one plain step and one SGDF step.

For the MLP of bench_core.py (100 -> 256 -> 256 -> 1, tanh, batch 256, Adam, the default
Gauss-Newton curvature with damping) this compiles ``sgdf._plain_step`` and ``sgdf.sgdf_step`` on
one minibatch and prints XLA's own flop count of each (``compiled.cost_analysis()``), with the count
by hand: a dense layer of m x n weights costs 2·B·m·n flops per matrix product; a plain step takes 3
products per layer (forward, and backward to the inputs and to the weights; the first layer's input
gradient is pruned), SGDF under Gauss-Newton takes 7 (``objective.grad_and_tangent``: the
linearization's forward and tangent, and the transpose applied to two cotangents at once). If the
time ratio measured by bench_core.py is at or below the flop ratio, the step is at its arithmetic
floor and what is left is the method's, not the implementation's.

Usage: python benchmarks/sgdf_flops.py [--hidden 256,256] [--p 100] [--batch 256]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from alloop.core import losses, models, objective, regularizers, sgdf


def flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--p", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    p, b = args.p, args.batch
    rng = np.random.default_rng(0)
    model = models.mlp(p, 1, hidden=hidden, activation="tanh")
    params = model.init(jax.random.PRNGKey(0))
    stats = models.fit_standardizer(np.zeros(p), np.ones(p))
    x, y = rng.normal(size=(b, p)).astype(np.float32), rng.normal(size=(b, 1)).astype(np.float32)
    data = objective.make_data(x, y)
    cfg = sgdf.TrainConfig(lr=1e-3, batch_size=b)
    opt = sgdf.make_optimizer(cfg, 1000)
    rows = []
    for curvature, damping in (objective.default_curvature("mlp"), ("hessian", 0.0)):
        prob = objective.Problem(
            model, losses.squared, regularizers.l2_weights(params), stats, curvature, damping
        )
        state = sgdf.init_state(params, opt)
        s = jnp.float32(1.0)
        plain = flops(
            lambda st, d, s_, prob=prob: sgdf._plain_step(prob, opt, b, st, d, s_), state, data, s
        )
        tang = flops(
            lambda st, d, s_, prob=prob: sgdf.sgdf_step(prob, opt, b, st, d, s_), state, data, s
        )
        rows.append((curvature, plain, tang))
    sizes = (p, *hidden, 1)
    layer = [2 * b * m * n for m, n in zip(sizes[:-1], sizes[1:])]
    by_hand_plain = sum(layer) * 3 - layer[0]  # no gradient to the inputs
    by_hand_gn = sum(layer) * 7 - 2 * layer[0]
    print(f"MLP {'->'.join(map(str, sizes))}, batch {b}: flops per step (XLA cost analysis)")
    print("| curvature | plain step | SGDF step | ratio |")
    print("|---|---|---|---|")
    for curvature, plain, tang in rows:
        print(f"| {curvature} | {plain:.3g} | {tang:.3g} | {tang / plain:.2f} |")
    print(
        f"by hand (matrix products only): plain {by_hand_plain:.3g}, SGDF Gauss-Newton "
        f"{by_hand_gn:.3g}, ratio {by_hand_gn / by_hand_plain:.2f}"
    )


if __name__ == "__main__":
    main()
