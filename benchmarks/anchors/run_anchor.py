#!/usr/bin/env python
"""Run one published active-learning method ("anchor") by its own code on one dataset.

Runs in the separate environment benchmarks/anchors/.venv (see setup.sh); nothing here is a
dependency of alloop. Usage:

    benchmarks/anchors/.venv/bin/python benchmarks/anchors/run_anchor.py \
        --pool POOL.parquet --test TEST.parquet --meta META.json --method bmdal-lcmd-tp \
        --reps 2 --seed 0 --initial 10 --batch 10 --budget 200 --out CURVES.csv [--first-rep 0]

Protocol: see protocol.py (initial rows) and README.md. One CSV row per (rep, n_labels).
A repetition's rows are appended only when the repetition is complete; repetitions already in
--out for (dataset, method) are skipped, so an interrupted run resumes.
"""

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path


def _threads_from_argv(default=1):
    """--threads must be known before numpy/torch load their thread pools."""
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


N_THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(N_THREADS)

import numpy as np  # noqa: E402 - after the thread settings above

if not hasattr(np, "Inf"):  # bmdal-reg 3.0.2 still uses np.Inf (removed in numpy 2)
    np.Inf = np.inf

import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("anchor_protocol", HERE / "protocol.py")
protocol = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protocol)

VERBOSE = os.environ.get("ANCHOR_VERBOSE", "0") == "1"

# --------------------------------------------------------------------------------------------
# bmdal-reg (Holzmüller, Zaverkin, Kästner, Steinwart, JMLR 24(164), 2023)
# Configs copied from bmdal_reg/run_experiments.py::get_bmdal_configs with get_relu_configs()
# (post_sigma = 1e-3, lr = 0.375, weight_gain = bias_gain = 0.2, allow_float64=True), the
# ReLU algorithms that bmdal_reg/run_evaluation.py selects for the paper's tables/plots.
SIGMA = 1e-3
BMDAL_COMMON = dict(maxdet_sigma=SIGMA, bait_sigma=SIGMA, allow_float64=True)
BMDAL_METHODS = {
    # NN_lcmd-tp_grad_rp-512  (the paper's recommended method, "LCMD-TP")
    "bmdal-lcmd-tp": dict(
        selection_method="lcmd",
        sel_with_train=True,
        base_kernel="grad",
        kernel_transforms=[("rp", [512])],
    ),
    # NN_kmeanspp-p_grad_rp-512_acs-rf-512  ("KMeansPP-P")
    "bmdal-kmeanspp-p": dict(
        selection_method="kmeanspp",
        sel_with_train=False,
        base_kernel="grad",
        kernel_transforms=[("rp", [512]), ("acs-rf", [512, SIGMA, None])],
    ),
    # NN_maxdiag_grad_rp-512_acs-rf-512  ("MaxDiag")
    "bmdal-maxdiag": dict(
        selection_method="maxdiag",
        base_kernel="grad",
        kernel_transforms=[("rp", [512]), ("acs-rf", [512, SIGMA, None])],
    ),
    # NN_bait-f-p_grad_rp-512_train  ("BAIT-F-P"; overselection factor 1)
    "bmdal-bait": dict(
        selection_method="bait",
        overselection_factor=1.0,
        base_kernel="grad",
        kernel_transforms=[("rp", [512]), ("train", [SIGMA, None])],
    ),
    # NN_random
    "bmdal-random": dict(selection_method="random", base_kernel="linear", kernel_transforms=[]),
}
BMDAL_NET = dict(hidden_sizes=[512, 512], act="relu", weight_gain=0.2, bias_gain=0.2)
BMDAL_TRAIN = dict(n_epochs=100, batch_size=256, lr=0.375)  # lr_sched 'lin' (their default)

SKAL_REG_METHODS = [
    "skal-gsx",
    "skal-gsy",
    "skal-igs",
    "skal-qbc",
    "skal-emcm",
    "skal-emvr",
    "skal-random",
]
SKAL_CLF_METHODS = ["skal-margin", "skal-entropy", "skal-badge", "skal-typiclust", "skal-random"]
MAX_CANDIDATES = 2000  # SubSamplingWrapper on pools larger than this
RIDGE_ALPHA = 1.0


def soft_clip_standardize(X, ref):
    mu = ref.mean(axis=0, keepdims=True)
    sd = ref.std(axis=0, keepdims=True)
    return 5.0 * np.tanh(0.2 * (X - mu) / (sd + 1e-30))


def standardize(X, ref):
    mu = ref.mean(axis=0, keepdims=True)
    sd = ref.std(axis=0, keepdims=True)
    sd[sd == 0] = 1.0
    return (X - mu) / sd


# --------------------------------------------------------------------------------------------
class BmdalRunner:
    model_name = "bmdal-nn-2x512"

    def __init__(self, method, X_pool, y_pool, X_test, y_test):
        import torch
        from bmdal_reg.bmdal.algorithms import select_batch
        from bmdal_reg.bmdal.feature_data import TensorFeatureData
        from bmdal_reg.data import DictDataset
        from bmdal_reg.models import create_tabular_model
        from bmdal_reg.train import fit_model

        self.torch, self.select_batch, self.TFD = torch, select_batch, TensorFeatureData
        self.DictDataset, self.create_model, self.fit_model = (
            DictDataset,
            create_tabular_model,
            fit_model,
        )
        self.cfg = dict(BMDAL_COMMON, **BMDAL_METHODS[method])
        # inputs: standardized on the pool, soft-clipped 5 tanh(x/5) (bmdal_reg/data.py TaskSplit)
        self.X_pool = torch.as_tensor(soft_clip_standardize(X_pool, X_pool), dtype=torch.float32)
        self.X_test = torch.as_tensor(soft_clip_standardize(X_test, X_pool), dtype=torch.float32)
        self.y_pool = np.asarray(y_pool, dtype=np.float64)
        self.y_test = np.asarray(y_test, dtype=np.float64)
        self.model = None

    def start_rep(self, seed):
        self.torch.manual_seed(seed)
        np.random.seed(seed % (2**32))

    def fit(self, labeled):
        torch = self.torch
        y = self.y_pool[labeled]
        self.y_mu, self.y_sd = y.mean(), y.std()
        if not self.y_sd > 0:
            self.y_sd = 1.0
        y_std = np.zeros(len(self.y_pool))
        y_std[labeled] = (y - self.y_mu) / self.y_sd
        self.y_tensor = torch.as_tensor(y_std[:, None], dtype=torch.float32)
        data = self.DictDataset({"X": self.X_pool, "y": self.y_tensor})
        model = self.create_model(n_models=1, n_features=self.X_pool.shape[1], **BMDAL_NET)
        with contextlib.redirect_stdout(io.StringIO()):  # fit_model prints one dot per epoch
            self.fit_model(
                model, data, 1, torch.as_tensor(labeled, dtype=torch.int64), None, **BMDAL_TRAIN
            )
        self.model = model

    def query(self, labeled, unlabeled, k):
        torch = self.torch
        tr = torch.as_tensor(labeled, dtype=torch.int64)
        po = torch.as_tensor(unlabeled, dtype=torch.int64)
        X = self.TFD(self.X_pool)
        with contextlib.redirect_stdout(io.StringIO()):
            idx, _ = self.select_batch(
                batch_size=k,
                models=[self.model.get_single_model(0)],
                data={"train": X[tr], "pool": X[po]},
                y_train=self.y_tensor[tr],
                **self.cfg,
            )
        return np.asarray(unlabeled)[idx.cpu().numpy()]

    def evaluate(self):
        with self.torch.no_grad():
            self.model.eval()
            pred = self.model(self.X_test[None]).squeeze(0).squeeze(-1).double().numpy()
            self.model.train()
        pred = pred * self.y_sd + self.y_mu
        err = pred - self.y_test
        return {
            "test_rmse": float(np.sqrt(np.mean(err**2))),
            "test_mae": float(np.mean(np.abs(err))),
        }


# --------------------------------------------------------------------------------------------
class SkalRegRunner:
    """scikit-activeml 1.0.1 regression strategies; the evaluated model is always ridge
    (alpha=1) on inputs standardized on the pool, so every skal-* curve uses the same model."""

    model_name = "ridge"

    def __init__(self, method, X_pool, y_pool, X_test, y_test):
        from skactiveml import pool as P
        from skactiveml.regressor import SklearnNormalRegressor, SklearnRegressor
        from sklearn.ensemble import BaggingRegressor
        from sklearn.linear_model import BayesianRidge, Ridge

        self.method = method
        self.X_pool = standardize(X_pool, X_pool)
        self.X_test = standardize(X_test, X_pool)
        self.y_pool = np.asarray(y_pool, dtype=np.float64)
        self.y_test = np.asarray(y_test, dtype=np.float64)
        self.P = P
        self.mk_ridge = lambda rs: SklearnRegressor(Ridge(alpha=RIDGE_ALPHA), random_state=rs)
        self.mk_bag = lambda rs: SklearnRegressor(
            BaggingRegressor(Ridge(alpha=RIDGE_ALPHA), n_estimators=10, random_state=rs),
            random_state=rs,
        )
        self.mk_bayes = lambda rs: SklearnNormalRegressor(BayesianRidge(), random_state=rs)

    def start_rep(self, seed):
        self.seed = seed
        np.random.seed(seed % (2**32))
        P, m, rs = self.P, self.method, seed
        kw = {}
        if m == "skal-gsx":
            qs = P.GreedySamplingX(random_state=rs)
        elif m == "skal-gsy":
            qs = P.GreedySamplingTarget(method="GSy", random_state=rs)
            kw = dict(reg=self.mk_ridge(rs))
        elif m == "skal-igs":
            qs = P.GreedySamplingTarget(method="GSi", random_state=rs)
            kw = dict(reg=self.mk_ridge(rs))
        elif m == "skal-qbc":
            qs = P.QueryByCommittee(random_state=rs)
            kw = dict(ensemble=self.mk_bag(rs))
        elif m == "skal-emcm":
            # int n_train: bootstraps of size n+1 drawn with replacement (a float multiplies twice)
            qs = P.ExpectedModelChangeMaximization(bootstrap_size=3, n_train=1, random_state=rs)
            kw = dict(reg=self.mk_ridge(rs))
        elif m == "skal-emvr":
            qs = P.ExpectedModelVarianceReduction(random_state=rs)
            kw = dict(reg=self.mk_bayes(rs))
        elif m == "skal-random":
            qs = P.RandomSampling(random_state=rs)
        else:
            raise ValueError(m)
        if len(self.X_pool) > MAX_CANDIDATES and m != "skal-random":
            qs = P.SubSamplingWrapper(
                query_strategy=qs,
                max_candidates=MAX_CANDIDATES,
                exclude_non_subsample=True,
                random_state=rs,
            )
        self.qs, self.qkw = qs, kw

    def fit(self, labeled):
        from sklearn.linear_model import Ridge

        self.model = Ridge(alpha=RIDGE_ALPHA).fit(self.X_pool[labeled], self.y_pool[labeled])

    def query(self, labeled, unlabeled, k):
        y = np.full(len(self.y_pool), np.nan)
        y[labeled] = self.y_pool[labeled]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx = self.qs.query(self.X_pool, y, batch_size=k, **self.qkw)
        return np.asarray(idx, dtype=int)

    def evaluate(self):
        err = self.model.predict(self.X_test) - self.y_test
        return {
            "test_rmse": float(np.sqrt(np.mean(err**2))),
            "test_mae": float(np.mean(np.abs(err))),
        }


# --------------------------------------------------------------------------------------------
class SkalClfRunner:
    """scikit-activeml 1.0.1 classification strategies on
    SklearnClassifier(LogisticRegression(max_iter=1000)), inputs standardized on the pool."""

    model_name = "logreg"

    def __init__(self, method, X_pool, y_pool, X_test, y_test, classes):
        from skactiveml import pool as P

        self.method, self.P = method, P
        self.classes = list(classes)
        enc = {c: i for i, c in enumerate(self.classes)}
        self.X_pool = standardize(X_pool, X_pool)
        self.X_test = standardize(X_test, X_pool)
        self.y_pool = np.array([enc[v] for v in y_pool], dtype=np.float64)
        self.y_test = np.array([enc[v] for v in y_test], dtype=int)

    def mk_clf(self, rs):
        from skactiveml.classifier import SklearnClassifier
        from sklearn.linear_model import LogisticRegression

        return SklearnClassifier(
            LogisticRegression(max_iter=1000), classes=np.arange(len(self.classes)), random_state=rs
        )

    def start_rep(self, seed):
        np.random.seed(seed % (2**32))
        P, m, rs = self.P, self.method, seed
        kw = {}
        if m == "skal-margin":
            qs = P.UncertaintySampling(method="margin_sampling", random_state=rs)
            kw = dict(clf=self.mk_clf(rs))
        elif m == "skal-entropy":
            qs = P.UncertaintySampling(method="entropy", random_state=rs)
            kw = dict(clf=self.mk_clf(rs))
        elif m == "skal-badge":
            qs = P.Badge(random_state=rs)
            kw = dict(clf=self.mk_clf(rs))
        elif m == "skal-typiclust":
            qs = P.TypiClust(random_state=rs)
        elif m == "skal-random":
            qs = P.RandomSampling(random_state=rs)
        else:
            raise ValueError(m)
        if len(self.X_pool) > MAX_CANDIDATES and m != "skal-random":
            qs = P.SubSamplingWrapper(
                query_strategy=qs,
                max_candidates=MAX_CANDIDATES,
                exclude_non_subsample=True,
                random_state=rs,
            )
        self.qs, self.qkw, self.seed = qs, kw, seed

    def fit(self, labeled):
        y = np.full(len(self.y_pool), np.nan)
        y[labeled] = self.y_pool[labeled]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = self.mk_clf(self.seed).fit(self.X_pool, y)

    def query(self, labeled, unlabeled, k):
        y = np.full(len(self.y_pool), np.nan)
        y[labeled] = self.y_pool[labeled]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx = self.qs.query(self.X_pool, y, batch_size=k, **self.qkw)
        return np.asarray(idx, dtype=int)

    def evaluate(self):
        proba = self.model.predict_proba(self.X_test)
        pred = proba.argmax(axis=1)
        p_true = np.clip(proba[np.arange(len(self.y_test)), self.y_test], 1e-15, 1.0)
        return {
            "test_error": float(np.mean(pred != self.y_test)),
            "test_log_loss": float(-np.mean(np.log(p_true))),
        }


# --------------------------------------------------------------------------------------------
def make_runner(method, task, X_pool, y_pool, X_test, y_test, classes):
    if task == "regression":
        if method in BMDAL_METHODS:
            return BmdalRunner(method, X_pool, y_pool, X_test, y_test)
        if method in SKAL_REG_METHODS:
            return SkalRegRunner(method, X_pool, y_pool, X_test, y_test)
        raise SystemExit(
            f"unknown regression method {method!r}; "
            f"known: {sorted(BMDAL_METHODS) + SKAL_REG_METHODS}"
        )
    if method in SKAL_CLF_METHODS:
        return SkalClfRunner(method, X_pool, y_pool, X_test, y_test, classes)
    raise SystemExit(f"unknown classification method {method!r}; known: {SKAL_CLF_METHODS}")


def rep_seed(seed, rep):
    # one integer per (seed, rep), independent of the method: all methods of a rep share the
    # initial rows and (for the bmdal NN) the initial weights of the first model
    return int(np.random.SeedSequence([seed, rep]).generate_state(1)[0])


def run_rep(runner, n_pool, rep, args):
    seed = rep_seed(args.seed, rep)
    runner.start_rep(seed)
    if hasattr(runner, "torch"):
        runner.torch.manual_seed(seed)
    labeled = list(protocol.initial_rows(n_pool, rep, args.seed, args.initial))
    counts = protocol.label_counts(args.initial, args.batch, args.budget)
    t0 = time.perf_counter()
    rows = []
    tq = 0.0
    for target in counts:
        while len(labeled) < target:
            k = target - len(labeled)
            is_lab = np.zeros(n_pool, dtype=bool)
            is_lab[labeled] = True
            unlabeled = np.flatnonzero(~is_lab)
            tq = time.perf_counter()
            picks = [int(i) for i in runner.query(np.asarray(labeled), unlabeled, k)]
            tq = time.perf_counter() - tq
            if len(set(picks)) != len(picks) or is_lab[picks].any():
                raise RuntimeError(f"{args.method}: query returned duplicates or labeled rows")
            labeled.extend(picks)
        tf = time.perf_counter()
        runner.fit(np.asarray(labeled))
        tf = time.perf_counter() - tf
        metrics = runner.evaluate()
        rows.append(
            dict(
                rep=rep,
                n_labels=len(labeled),
                **metrics,
                seconds=round(time.perf_counter() - t0, 3),
            )
        )
        print(
            f"  rep {rep} n={len(labeled):4d} "
            + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            + f" t={rows[-1]['seconds']:.1f}s"
            + (
                f" (fit {tf:.2f}s, last query {tq:.2f}s)"
                if VERBOSE and len(labeled) > args.initial
                else ""
            ),
            flush=True,
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pool", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--first-rep", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--initial", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/BLAS threads (default 1: with 2 threads, torch's training is ~10x "
        "slower whenever the cores are shared with other jobs)",
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(N_THREADS)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:
        pass

    meta = json.loads(Path(args.meta).read_text())
    task = meta["task"]
    dataset = meta.get("name", Path(args.meta).parent.name)
    feats = meta["features"]
    target = meta.get("target", "target")
    pool = pd.read_parquet(args.pool)
    test = pd.read_parquet(args.test)
    X_pool = pool[feats].to_numpy(dtype=np.float64)
    X_test = test[feats].to_numpy(dtype=np.float64)
    classes = None
    if task == "regression":
        y_pool = pool[target].to_numpy(dtype=np.float64)
        y_test = test[target].to_numpy(dtype=np.float64)
        metric_cols = ["test_rmse", "test_mae"]
    else:
        y_pool = pool[target].astype(str).to_numpy()
        y_test = test[target].astype(str).to_numpy()
        classes = meta.get("classes") or sorted(set(y_pool) | set(y_test))
        metric_cols = ["test_error", "test_log_loss"]
    n_pool = len(pool)
    if args.budget > n_pool:
        raise SystemExit(f"budget {args.budget} > pool size {n_pool}")

    fields = ["dataset", "method", "model", "rep", "n_labels"] + metric_cols + ["seconds"]
    out = Path(args.out)
    done = set()
    if out.exists() and out.stat().st_size > 0:
        prev = pd.read_csv(out)
        if list(prev.columns) != fields:
            raise SystemExit(
                f"{out} has columns {list(prev.columns)}, expected {fields}: "
                "use one --out file per task type"
            )
        prev = prev[(prev["dataset"] == dataset) & (prev["method"] == args.method)]
        done = set(int(r) for r in prev["rep"].unique())

    runner = make_runner(args.method, task, X_pool, y_pool, X_test, y_test, classes)
    for rep in range(args.first_rep, args.first_rep + args.reps):
        if rep in done:
            print(f"{dataset} {args.method} rep {rep}: already in {out}, skipped", flush=True)
            continue
        print(f"{dataset} {args.method} rep {rep} (model {runner.model_name})", flush=True)
        rows = run_rep(runner, n_pool, rep, args)
        new = not out.exists() or out.stat().st_size == 0
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow(dict(dataset=dataset, method=args.method, model=runner.model_name, **r))
            f.flush()
            os.fsync(f.fileno())


if __name__ == "__main__":
    main()
