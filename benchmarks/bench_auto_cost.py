"""What ``--model auto`` costs per training with its MLP candidate, as ratios measured in one
process.

For n labels (a nonlinear target on 8 features), after one warm-up call of each (XLA compiles once
per padded size, which a run pays once):

- ``choose``: the whole model choice (linear, poly 2, poly 3 and, from 40 labels, the MLP's grid),
  against the same choice without the MLP (``linear only``);
- ``grid``: the MLP's grid alone (every fold and s trained at once, ``choose_s.choose_grid``),
  against the run's own training of that MLP on the n labels (``fit.fit``, SGDF with the tangent,
  what ``alloop train`` does after choosing).

    python benchmarks/bench_auto_cost.py                 # n = 50, 200, 2000
    python benchmarks/bench_auto_cost.py --labels 100,1000 --reps 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from alloop.config import PoolSpec, RunConfig
from alloop.training import choose_model, choose_s
from alloop.training import fit as fitting


def config(d: int, model: str) -> RunConfig:
    pool = PoolSpec("p", "p", "id", tuple(f"x{j}" for j in range(d)), "", 100_000)
    return RunConfig(
        pool,
        {"mean": [0.0] * d, "std": [1.0] * d},
        fitting.model_spec(model),
        "regression",
        ("target",),
        s="auto",
    )


def timed(fn, reps: int) -> float:
    fn()  # warm-up: compilation
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--labels", default="50,200,2000")
    ap.add_argument(
        "--reps", type=int, default=2, help="timed calls per figure (the fastest is kept)"
    )
    args = ap.parse_args()
    d = 8
    rng = np.random.default_rng(0)
    auto = config(d, "auto")
    mlp = config(d, "mlp").with_s(1.0)
    linear_specs = [spec for spec in choose_model.candidates() if spec.kind != "mlp"]
    print(
        "labels  choose (s)  linear only (s)  choose / linear only  grid (s)  MLP training "
        "(s)  grid / training"
    )
    for n in (int(v) for v in args.labels.split(",")):
        x = rng.normal(size=(n, d)).astype(np.float32)
        y = (np.sin(2.0 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=n))[:, None]
        everything = timed(lambda x=x, y=y: choose_model.choose(auto, x, y), args.reps)
        linear = timed(
            lambda x=x, y=y: [
                choose_s.resolve_s(auto.replace(model=spec), x, y) for spec in linear_specs
            ],
            args.reps,
        )
        grid = timed(
            lambda x=x, y=y: choose_s.choose_grid(
                auto.replace(model=fitting.model_spec("mlp")), x, y
            ),
            args.reps,
        )
        train = timed(lambda x=x, y=y: fitting.fit(mlp, x, y), 1)
        print(
            f"{n:6d}  {everything:10.2f}  {linear:15.2f}  {everything / linear:20.1f}  "
            f"{grid:8.2f}  {train:16.2f}  {grid / train:15.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
