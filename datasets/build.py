#!/usr/bin/env python3
"""Regenerate every bundled dataset folder under ``datasets/``.

    python datasets/build.py               # rebuild all datasets
    python datasets/build.py wine concrete # rebuild only these

Each folder gets ``pool.parquet``, ``test.parquet`` and ``meta.json`` (``paper1d`` also gets
``seed_labels.parquet``). The output is deterministic: every random choice uses a fixed numpy
seed (``SEEDS`` below) and the Parquet writer settings are fixed, so two runs on the same
environment produce byte-identical files.

Sources:
* generated (``paper1d``): numpy only;
* scikit-learn bundled (``diabetes``, ``breast_cancer``, ``wine``, ``digits``): imports sklearn
  (a dev-time dependency only; alloop itself never imports it);
* downloaded (``powerplant``, ``concrete``): read from the small raw CSV copies in ``datasets/raw/``
  so the build runs offline. See ``datasets/README.md`` for where each raw copy came from.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent
RAW = ROOT / "raw"
TEST_FRACTION = 0.2

# One fixed seed per dataset: the split (and, for paper1d, the data itself) depends only on it.
SEEDS = {
    "paper1d": 1993,
    "diabetes": 2004,
    "breast_cancer": 1995,
    "wine": 1991,
    "digits": 1998,
    "powerplant": 2014,
    "concrete": 1999,
}


# --------------------------------------------------------------------------------------------
# helpers


def snake(name: str) -> str:
    """'mean radius' -> 'mean_radius', 'od280/od315_of_diluted_wines' ->
    'od280_od315_of_diluted_wines'."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def split_rows(n: int, seed: int, labels=None, frac: float = TEST_FRACTION):
    """Random (optionally stratified) split of row indices 0..n-1 into (pool, test).

    Unstratified: ``round(frac * n)`` rows go to the test set. Stratified: ``round(frac * n_c)``
    rows of each class c (classes in sorted order). Both returned index arrays are in shuffled
    order, so the ids (assigned in that order) carry no trace of the source file's row order.
    """
    rng = np.random.default_rng(seed)
    test = np.zeros(n, dtype=bool)
    if labels is None:
        k = int(round(frac * n))
        test[rng.permutation(n)[:k]] = True
    else:
        labels = np.asarray(labels)
        for c in sorted(set(labels.tolist())):
            idx = np.flatnonzero(labels == c)
            k = int(round(frac * len(idx)))
            test[rng.permutation(idx)[:k]] = True
    pool_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = rng.permutation(np.flatnonzero(test))
    return pool_idx, test_idx


def _frame(X: pd.DataFrame, y, ids: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({"id": np.asarray(ids, dtype=np.int64)})
    for col in X.columns:
        out[col] = X[col].to_numpy(dtype=np.float64)
    out["target"] = y
    return out


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Fixed writer settings, no pandas index column: deterministic bytes for the same input."""
    fields = []
    for col in df.columns:
        kind = (
            pa.int64()
            if col == "id"
            else pa.string()
            if df[col].dtype == object or str(df[col].dtype) == "str"
            else pa.float64()
        )
        fields.append(pa.field(col, kind, nullable=False))
    schema = pa.schema(fields)  # no pandas metadata: plain columns only
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False).replace_schema_metadata(
        None
    )
    pq.write_table(
        table,
        path,
        compression="snappy",
        version="2.6",
        use_dictionary=True,
        write_statistics=True,
        row_group_size=1 << 20,
    )


def write_dataset(
    name: str,
    task: str,
    X: pd.DataFrame,
    y,
    *,
    source: str,
    description: str,
    seed: int | None = None,
    pool_idx=None,
    test_idx=None,
    extra_meta=None,
) -> dict:
    """Split (unless indices are given), assign ids, check, and write one dataset folder."""
    X = X.reset_index(drop=True)
    y = np.asarray(y)
    if task == "regression":
        y = y.astype(np.float64)
    elif task == "classification":
        y = y.astype(str).astype(object)
    else:
        raise ValueError(task)
    if pool_idx is None:
        pool_idx, test_idx = split_rows(
            len(X), seed, labels=y if task == "classification" else None
        )
    n_pool, n_test = len(pool_idx), len(test_idx)
    pool = _frame(X.iloc[pool_idx], y[pool_idx], np.arange(n_pool))
    test = _frame(X.iloc[test_idx], y[test_idx], np.arange(n_pool, n_pool + n_test))

    features = list(X.columns)
    for df in (pool, test):
        assert list(df.columns) == ["id", *features, "target"]
        assert not df.isna().any().any(), f"{name}: NaN in output"
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in df.columns), df.columns
    assert len(set(pool["id"]) | set(test["id"])) == n_pool + n_test

    folder = ROOT / name
    folder.mkdir(exist_ok=True)
    write_parquet(pool, folder / "pool.parquet")
    write_parquet(test, folder / "test.parquet")
    meta = {
        "name": name,
        "task": task,
        "target": "target",
        "id": "id",
        "features": features,
        "source": source,
        "n_pool": n_pool,
        "n_test": n_test,
        "description": description,
    }
    if task == "classification":
        meta["classes"] = sorted(set(y.tolist()))  # extra key: the label set, sorted
    if extra_meta:
        meta.update(extra_meta)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------------------------
# generated


def paper1d_function(x):
    """The smooth ground truth of ``paper1d``: f(x) = sin(3x) + 0.5 cos(2x) on [-1, 1]."""
    return np.sin(3.0 * x) + 0.5 * np.cos(2.0 * x)


PAPER1D_NOISE_SD = 0.05
PAPER1D_SEED_X = (
    -1.0,
    -0.85,
    -0.7,
    0.7,
    0.85,
    1.0,
)  # six labeled points, gap (-0.7, 0.7) in the middle


def build_paper1d():
    """The 1-D example of the paper's section 3.3 (Figure 1), regenerated.

    Pool: the 401-point uniform grid x = -1, -0.995, ..., 1 (id i <-> x = -1 + i/200).
    Test: 200 points drawn uniformly from [-1, 1], sorted by x.
    Target: f(x) + N(0, 0.05^2) noise. Seed labels: the pool rows at PAPER1D_SEED_X (three at each
    end of the domain, none in (-0.7, 0.7)), with their pool targets.
    """
    rng = np.random.default_rng(SEEDS["paper1d"])
    x_pool = np.round(np.linspace(-1.0, 1.0, 401), 12)
    x_test = np.sort(rng.uniform(-1.0, 1.0, size=200))
    y_pool = paper1d_function(x_pool) + rng.normal(0.0, PAPER1D_NOISE_SD, size=x_pool.size)
    y_test = paper1d_function(x_test) + rng.normal(0.0, PAPER1D_NOISE_SD, size=x_test.size)

    X = pd.DataFrame({"x": np.concatenate([x_pool, x_test])})
    y = np.concatenate([y_pool, y_test])
    n = x_pool.size
    meta = write_dataset(
        "paper1d",
        "regression",
        X,
        y,
        pool_idx=np.arange(n),
        test_idx=np.arange(n, n + x_test.size),
        source=(
            "generated by datasets/build.py (numpy, seed 1993), after section 3.3 / Figure 1 "
            "of the paper"
        ),
        description=(
            "1-D regression y = sin(3x) + 0.5cos(2x) + N(0, 0.05^2) on [-1, 1]; six "
            "seed labels leave a gap in the middle, as in the paper's degree-5 "
            "polynomial example"
        ),
        extra_meta={"demo": {"model": {"kind": "poly", "degree": 5}}},
    )
    seed_ids = [int(np.argmin(np.abs(x_pool - v))) for v in PAPER1D_SEED_X]
    assert np.allclose(x_pool[seed_ids], PAPER1D_SEED_X)
    seed = pd.DataFrame({"id": np.asarray(seed_ids, dtype=np.int64), "target": y_pool[seed_ids]})
    write_parquet(seed, ROOT / "paper1d" / "seed_labels.parquet")
    return meta


# --------------------------------------------------------------------------------------------
# scikit-learn bundled


def build_diabetes():
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    # sklearn's s1..s6 are the six blood serum measurements, named as in Efron et al. (2004).
    names = [
        "age",
        "sex",
        "bmi",
        "blood_pressure",
        "total_cholesterol",
        "ldl",
        "hdl",
        "cholesterol_hdl_ratio",
        "log_triglycerides",
        "glucose",
    ]
    assert list(d.feature_names) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    X = pd.DataFrame(d.data, columns=names)
    return write_dataset(
        "diabetes",
        "regression",
        X,
        d.target,
        seed=SEEDS["diabetes"],
        source=(
            "scikit-learn load_diabetes(scaled=False); Efron, Hastie, Johnstone & Tibshirani (2004)"
        ),
        description=(
            "442 diabetes patients, 10 unscaled baseline variables; target: quantitative "
            "measure of disease progression one year after baseline"
        ),
    )


def build_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    X = pd.DataFrame(d.data, columns=[snake(c) for c in d.feature_names])
    y = np.asarray(d.target_names)[d.target]  # 0 -> 'malignant', 1 -> 'benign'
    return write_dataset(
        "breast_cancer",
        "classification",
        X,
        y,
        seed=SEEDS["breast_cancer"],
        source=(
            "scikit-learn load_breast_cancer(); UCI Breast Cancer Wisconsin (Diagnostic), Street "
            "et al. (1993)"
        ),
        description="569 breast masses, 30 features of cell nuclei from digitized FNA images; "
        "target: 'malignant' or 'benign' (stratified split)",
    )


def build_wine():
    from sklearn.datasets import load_wine

    d = load_wine()
    X = pd.DataFrame(d.data, columns=[snake(c) for c in d.feature_names])
    y = np.asarray(d.target_names)[d.target]
    return write_dataset(
        "wine",
        "classification",
        X,
        y,
        seed=SEEDS["wine"],
        source="scikit-learn load_wine(); UCI Wine, Forina et al. (1988)",
        description="178 Italian wines from three cultivars, 13 chemical measurements; "
        "target: 'class_0', 'class_1' or 'class_2' (stratified split)",
    )


def build_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = pd.DataFrame(d.data, columns=[snake(c) for c in d.feature_names])
    y = d.target.astype(str)
    return write_dataset(
        "digits",
        "classification",
        X,
        y,
        seed=SEEDS["digits"],
        source=(
            "scikit-learn load_digits(); UCI Optical Recognition of Handwritten Digits, Alpaydin "
            "& Kaynak (1998)"
        ),
        description="1797 handwritten digits as 8x8 images of pixel counts 0..16 (pixel_row_col); "
        "target: the digit '0'..'9' (stratified split)",
    )


# --------------------------------------------------------------------------------------------
# downloaded (raw copies in datasets/raw/)


def build_powerplant():
    raw = pd.read_csv(RAW / "powerplant_Folds5x2_pp.csv")
    assert list(raw.columns) == ["AT", "V", "AP", "RH", "EP"] and raw.shape == (9568, 5)
    X = raw[["AT", "V", "AP", "RH"]].set_axis(
        ["temperature", "exhaust_vacuum", "ambient_pressure", "relative_humidity"], axis=1
    )
    return write_dataset(
        "powerplant",
        "regression",
        X,
        raw["EP"],
        seed=SEEDS["powerplant"],
        source=(
            "UCI Combined Cycle Power Plant (Tufekci 2014), raw copy "
            "datasets/raw/powerplant_Folds5x2_pp.csv"
        ),
        description=(
            "9568 hourly averages from a combined cycle power plant (2006-2011): ambient "
            "temperature (C), exhaust vacuum (cm Hg), ambient pressure (mbar), relative "
            "humidity (%); target: net hourly electrical energy output (MW)"
        ),
    )


def build_concrete():
    raw = pd.read_csv(RAW / "concrete_Concrete_Data.csv", sep=";")
    assert raw.shape == (1030, 9)
    names = [
        "cement",
        "blast_furnace_slag",
        "fly_ash",
        "water",
        "superplasticizer",
        "coarse_aggregate",
        "fine_aggregate",
        "age",
    ]
    X = raw.iloc[:, :8].set_axis(names, axis=1)
    return write_dataset(
        "concrete",
        "regression",
        X,
        raw.iloc[:, 8],
        seed=SEEDS["concrete"],
        source=(
            "UCI Concrete Compressive Strength (Yeh 1998), raw copy "
            "datasets/raw/concrete_Concrete_Data.csv"
        ),
        description=(
            "1030 concrete mixtures: seven ingredients (kg per m^3 of mixture) and age "
            "(days); target: compressive strength (MPa)"
        ),
    )


BUILDERS = {
    "paper1d": build_paper1d,
    "diabetes": build_diabetes,
    "breast_cancer": build_breast_cancer,
    "wine": build_wine,
    "digits": build_digits,
    "powerplant": build_powerplant,
    "concrete": build_concrete,
}


def main(argv: list[str]) -> int:
    names = argv or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        print(
            f"unknown dataset(s): {', '.join(unknown)}; choose from {', '.join(BUILDERS)}",
            file=sys.stderr,
        )
        return 2
    for name in names:
        meta = BUILDERS[name]()
        sizes = ", ".join(
            f"{p.name} {p.stat().st_size / 1024:.1f} KiB"
            for p in sorted((ROOT / name).glob("*.parquet"))
        )
        print(
            f"{name:14s} {meta['task']:14s} pool {meta['n_pool']:5d}  test {meta['n_test']:5d}  "
            f"features {len(meta['features']):3d}  ({sizes})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
