"""The pool's features as float32, kept between commands while the pool's files are unchanged.

Every training reads the labeled rows' features from the pool (``pool.take_rows``: a pass over the
id column, then the matching rows), a tenth to a third of a second on a 50k-row pool, in every
``ingest`` and ``query``. Here the first such read streams the pool once and stores all its ids and
float32 features (``pool.iter_batches``' own conversion, so the values are bit-identical) in one
``.npz`` under the user's cache folder; later reads look the labeled ids up in it.

An entry is keyed by the pool's files (absolute path, size and modification time in ns), its id
and feature columns and the schema fingerprint: writing, replacing or touching any file of the pool
gives another key, so a changed pool is never served from a stale entry (the older entry of the
same pool is removed when the new one is written). Pools on object storage, and pools whose
features would take more than ``MAX_BYTES``, are never cached (the caller reads the pool as before).
Writes are atomic (temp file, rename); an unreadable entry is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from alloop.io import pool as poolio

MAX_BYTES = 256 << 20  # features of at most this size are cached (a 50k x 26 pool takes 5 MB)
VERSION = 1


def _key(info: poolio.PoolInfo) -> tuple[str, str] | None:
    """(pool key, data key): the first names the pool, the second its current contents; None if not cacheable."""
    if (
        getattr(info, "filesystem", None) is not None
    ):  # object storage (a pool reader that knows it)
        return None
    files = []
    for f in info.files:
        try:
            st = os.stat(f)
        except OSError:
            return None
        files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    pool = hashlib.sha256(
        json.dumps([str(Path(info.path).resolve()), info.id_col, list(info.features)]).encode()
    ).hexdigest()[:24]
    data = hashlib.sha256(
        json.dumps([VERSION, files, info.id_kind, info.fingerprint, info.n_rows]).encode()
    ).hexdigest()[:24]
    return pool, data


def _read(path: Path, info: poolio.PoolInfo):
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, x = z["ids"], z["x"]
    except (OSError, ValueError, KeyError):
        return None
    if x.shape != (info.n_rows, len(info.features)) or len(ids) != info.n_rows:
        return None
    return ids, x


def _build(info: poolio.PoolInfo):
    ids, xs = [], []
    for b in poolio.iter_batches(info):
        ids.append(b.ids)
        xs.append(b.X)
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    x = np.concatenate(xs) if xs else np.zeros((0, len(info.features)), np.float32)
    if info.id_kind != "int":
        ids = ids.astype(str)  # stored as unicode, never pickled objects
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(x[order])


def _write(folder: Path, name: str, ids: np.ndarray, x: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids, x=x)
        os.replace(tmp, folder / name)
    except OSError:
        tmp.unlink(missing_ok=True)


def features(info: poolio.PoolInfo, ids, root: Path | None) -> np.ndarray | None:
    """Float32 features of the pool rows ``ids`` (in that order) from the cache under ``root``, building
    the entry on a miss; None when it cannot serve them (no cache, not cacheable, an id not in the
    pool: the caller then reads the pool, which also reports unknown ids)."""
    if root is None or info.n_rows * max(len(info.features), 1) * 4 > MAX_BYTES:
        return None
    key = _key(info)
    if key is None:
        return None
    folder, name = Path(root) / "pools" / key[0], f"{key[1]}.npz"
    got = _read(folder / name, info) if (folder / name).is_file() else None
    if got is None:
        got = _build(info)
        _write(folder, name, *got)
        for old in folder.glob("*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)
    keys, x = got
    want = np.asarray(ids)
    want = want.astype(np.int64) if info.id_kind == "int" else want.astype(str)
    pos = np.searchsorted(keys, want).clip(max=max(len(keys) - 1, 0))
    if len(keys) == 0 or not np.array_equal(keys[pos], want):
        return None
    return x[pos]
