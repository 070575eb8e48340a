"""Small labeled tables read whole: the held-out test set, and column listings of a pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from alloop.errors import UserError

_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


def column_names(path) -> list[str]:
    """The column names of a Parquet file or directory (schema only, no rows read)."""
    try:
        return list(ds.dataset(str(Path(path).expanduser()), format="parquet").schema.names)
    except _READ_ERRORS as e:
        raise UserError(
            f"cannot read '{path}' as Parquet ({_first_line(e)}): pass a Parquet file or directory"
        ) from None


def read_table(path) -> pd.DataFrame:
    """A whole CSV / Parquet / JSONL table (for small files such as a test set); Parquet also from object storage (``s3://…``)."""
    from alloop.io import pool as poolio  # pool imports nothing from here: no cycle

    if poolio.is_uri(path):
        fs, root = poolio.locate(path)
        try:
            return ds.dataset(root, format="parquet", filesystem=fs).to_table().to_pandas()
        except FileNotFoundError:
            poolio.missing_bucket(fs, root, str(path), what="file")
            raise UserError(
                f"file '{str(path).partition('?')[0]}' not found: check the URI"
            ) from None
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UserError(
                str(poolio.remote_error(str(path), e)).replace("pool '", "'", 1)
            ) from None
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"file '{path}' not found: check the path")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq") or p.is_dir():
            return ds.dataset(str(p), format="parquet").to_table().to_pandas()
        if suffix == ".csv":
            return pd.read_csv(p)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(p, lines=True)
    except _READ_ERRORS as e:
        raise UserError(
            f"cannot read '{path}' ({_first_line(e)}): check that the file is complete and of its format"
        ) from None
    raise UserError(f"'{path}' has an unknown extension: use .parquet, .csv or .jsonl")


def read_test_set(path, features: list[str], targets: list[str], task: str) -> pd.DataFrame:
    """The held-out labeled rows: the run's feature and target columns, checked for gaps."""
    df = read_table(path)
    missing = [c for c in [*features, *targets] if c not in df.columns]
    if missing:
        raise UserError(
            f"test set '{path}' lacks column(s) {', '.join(missing)}: it needs the pool's features and the target"
        )
    if len(df) == 0:
        raise UserError(f"test set '{path}' has no rows: pass a test set with labeled rows")
    for c in features:
        if not pd.api.types.is_numeric_dtype(df[c]) or not np.all(
            np.isfinite(df[c].to_numpy(np.float64))
        ):
            raise UserError(
                f"test set '{path}' has a non-numeric, missing or non-finite value in feature '{c}': clean it"
            )
    if task == "regression":
        for c in targets:
            vals = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
            if not np.all(np.isfinite(vals)):
                raise UserError(
                    f"test set '{path}' has a missing or non-numeric target in '{c}': clean it"
                )
    elif df[targets].isna().any().any():
        raise UserError(f"test set '{path}' has a missing class label in '{targets[0]}': clean it")
    return df[[*features, *targets]].reset_index(drop=True)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
