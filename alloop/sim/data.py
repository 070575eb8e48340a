"""The data a simulation replays: a labeled pool (streamed by the strategies from its file, as in a
live query) and a test set, held in memory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alloop.errors import UserError
from alloop.io import datasets, tables
from alloop.io import pool as poolio
from alloop.training import classmap


@dataclass(frozen=True)
class SimData:
    """A labeled pool and a test set, held in memory (float64)."""

    name: str
    features: tuple[str, ...]
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    ids: np.ndarray | None = None  # the pool's ids, in file order (row i of x_pool has ids[i])
    pool: str | None = None  # the pool file the strategies stream, as in a live query
    id_col: str = "id"
    target: str = "target"

    def open_pool(self) -> poolio.PoolInfo:
        """The pool as ``alloop query`` opens it: features only, the target column never read by a
        strategy."""
        if self.pool is None:
            raise ValueError(
                "this SimData was made from arrays: load it with load_data to stream its pool"
            )
        return poolio.open_pool(
            self.pool, id_col=self.id_col, features=list(self.features), targets=(self.target,)
        )

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Pool rows of the given ids."""
        rows = pd.Index(self.ids).get_indexer(ids)
        assert (rows >= 0).all(), "a strategy picked an id that is not in the pool"
        return rows.astype(np.int64)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for arr in (self.x_pool, self.y_pool, self.x_test, self.y_test):
            h.update(
                json.dumps(list(arr)).encode()
                if arr.dtype == object
                else np.ascontiguousarray(arr, np.float64).tobytes()
            )
        h.update(json.dumps(self.features).encode())
        return h.hexdigest()[:16]


def load_data(
    pool: str,
    test: str,
    target: str = "target",
    id_col: str = "id",
    name: str | None = None,
    task: str = "regression",
) -> SimData:
    """Read a pool (with its target column) and a test set whole."""
    info = poolio.open_pool(pool, id_col=id_col, targets=(target,))
    xs, ys, ids = [], [], []
    for batch in poolio.iter_batches(info, with_targets=True):
        xs.append(batch.X.astype(np.float64))
        ys.append(batch.Y)
        ids.append(batch.ids)
    y_pool = np.concatenate(ys)[:, 0] if ys else np.zeros(0)
    if task == "classification":
        if any(v is None or (isinstance(v, float) and not np.isfinite(v)) for v in y_pool):
            raise UserError(
                f"pool '{pool}' has a missing value in target '{target}': simulate needs "
                "every row labeled"
            )
        y_pool = np.asarray(classmap.normalize(y_pool), dtype=object)
    elif y_pool.dtype == object or not np.all(np.isfinite(y_pool.astype(np.float64))):
        raise UserError(
            f"pool '{pool}' has a missing or non-numeric value in target '{target}': simulate "
            "needs every row labeled (a class label? pass --task classification)"
        )
    df = tables.read_test_set(test, list(info.features), [target], task)
    y_test = (
        np.asarray(classmap.normalize(df[target]), dtype=object)
        if task == "classification"
        else df[target].to_numpy(np.float64)
    )
    return SimData(
        name or Path(pool).parent.name,
        tuple(info.features),
        np.concatenate(xs),
        y_pool if task == "classification" else y_pool.astype(np.float64),
        df[list(info.features)].to_numpy(np.float64),
        y_test,
        np.concatenate(ids) if ids else np.zeros(0, np.int64),
        str(pool),
        id_col,
        target,
    )


def dataset_files(name: str) -> tuple[str, str, dict]:
    """(pool, test, meta) of a bundled dataset under datasets/NAME."""
    meta = datasets.dataset_meta(name)
    folder = datasets.datasets_dir() / name
    return str(folder / "pool.parquet"), str(folder / "test.parquet"), meta


def pool_name(pool: str) -> str:
    """A name for the simulation's default folder: the pool file's stem, or its folder's name when
    the file is pool.parquet."""
    text = str(pool).partition("?")[0].rstrip("/")
    if poolio.is_uri(text):
        parts = [p for p in text.split("://", 1)[1].split("/") if p]
        stem = Path(parts[-1]).stem if parts else "pool"
        return stem if stem != "pool" or len(parts) < 2 else parts[-2]
    return Path(text).stem if Path(text).stem != "pool" else Path(text).resolve().parent.name
