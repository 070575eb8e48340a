"""A probe, not shipped: kernel herding with a bandwidth that shrinks as labels come in.

    # the regression suite, linear model
    python benchmarks/herding_bandwidth.py --power 2.5 --reps 5
    python benchmarks/herding_bandwidth.py --power 2.5 --reps 6 --model auto --datasets gag_urine

``herding`` uses the median-heuristic bandwidth h² (``core.diversity.rbf_bandwidth``): wide enough
that its picks match the pool's low moments (what a linear fit's variance depends on) but not finer
structure (on gag_urine, 4.4 years of age; docs/results.md). The probe scales h² by
n^(−power·2/(d+4)), n the labels after the batch (power 1: Silverman's rate for a density estimate),
by patching ``diversity.herding`` in this process. It runs ``herding`` and ``random`` as shipped and
the patched ``herding`` with the suite's protocol (same seeds, so paired), then prints per table the
relative area of each ``herding`` over the same repetitions of random.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import al_suite  # noqa: E402


def patch(power: float) -> None:
    """Make ``diversity.herding`` use h² · n^(−power·2/(d+4)), n = labeled rows + the batch."""
    from alloop.core import diversity

    shipped_herding, shipped_bandwidth = diversity.herding, diversity.rbf_bandwidth

    def herding(z, z_labeled, k, rng, *args, **kwargs):
        factor = (len(z_labeled) + k) ** (-power * 2.0 / (z.shape[1] + 4))
        diversity.rbf_bandwidth = lambda *a, **kw: shipped_bandwidth(*a, **kw) * factor
        try:
            return shipped_herding(z, z_labeled, k, rng, *args, **kwargs)
        finally:
            diversity.rbf_bandwidth = shipped_bandwidth

    diversity.herding = herding


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--power", type=float, default=2.5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default="linear")
    ap.add_argument("--datasets", help="comma-separated regression tables (default: all)")
    ap.add_argument("--out", default=str(HERE / "out" / "herding-bandwidth"))
    a = ap.parse_args(argv)
    names = a.datasets.split(",") if a.datasets else al_suite.suite.names("regression")
    root = Path(a.out) / a.model
    metas = {name: al_suite.suite.build(name) for name in names}
    for name in names:  # shipped first: the patch stays for the rest of the process
        al_suite.simulate_table(
            name,
            metas[name],
            ["herding", "random"],
            a.reps,
            root / "shipped" / name,
            a.model,
            jobs=1,
        )
    patch(a.power)
    for name in names:
        al_suite.simulate_table(
            name,
            metas[name],
            ["herding"],
            a.reps,
            root / f"power-{a.power:g}" / name,
            a.model,
            jobs=1,
        )
    print(
        f"| table | herding / random | shrinking bandwidth (power {a.power:g}) / random "
        "|\n|---|---|---|"
    )
    rel = []
    for name in names:
        shipped = pd.read_csv(root / "shipped" / name / "curves.csv")
        probe = pd.read_csv(root / f"power-{a.power:g}" / name / "curves.csv").assign(
            strategy="herding-bw"
        )
        reps = set(probe["rep"])  # the same repetitions of random for both
        df = (
            pd.concat([shipped[shipped["rep"].isin(reps)], probe])
            .rename(columns={"strategy": "method"})
            .assign(model="alloop")
        )
        t = al_suite.summarize(df, al_suite.budget_of(metas[name])).set_index("method")["rel_area"]
        rel.append((t["herding"], t["herding-bw"]))
        print(f"| {name} | {rel[-1][0]:.3f} | {rel[-1][1]:.3f} |")
    b, p = np.array(rel).T
    print(
        f"| mean of {len(rel)} | {b.mean():.3f} ({int(np.sum(b > 1.01))} above 1.01) | "
        f"{p.mean():.3f} ({int(np.sum(p > 1.01))} above 1.01) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
