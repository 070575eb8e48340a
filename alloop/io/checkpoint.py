"""Pytree checkpoints as plain ``.npz`` files: no pickle, structure taken from a ``like`` tree.

A tree is made of dicts, lists, tuples, NamedTuples (optax states), ``None`` and array leaves
(numpy, jax or Python scalars). Each leaf is stored under its key path, e.g. ``params/w`` or
``opt/0/mu/w`` (NamedTuple fields by name, sequences by index); the metadata dict is stored as
JSON in the ``__meta__`` entry. Loading walks the ``like`` tree built in code and reads only the
leaves, so the file can never choose what Python objects get built.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from alloop.errors import UserError
from alloop.io.atomic import write_bytes_atomic

META_KEY = "__meta__"
ROOT_KEY = "__root__"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def save_tree(path: Path, tree, meta: dict) -> None:
    """Atomically write ``tree`` and the JSON-able ``meta`` to ``path`` (an ``.npz``)."""
    write_bytes_atomic(Path(path), encode_tree(tree, meta))


def encode_tree(tree, meta: dict) -> bytes:
    """The ``.npz`` bytes for ``tree`` and ``meta``: entries sorted, fixed zip dates, so deterministic."""
    entries = dict(flatten_tree(tree))
    entries[META_KEY] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(entries):
            _write_entry(zf, key, entries[key])
    return buf.getvalue()


def _write_entry(zf: zipfile.ZipFile, key: str, arr: np.ndarray) -> None:
    info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
    info.create_system = 3  # fixed, so the bytes do not depend on the writing OS
    info.external_attr = 0o644 << 16
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def flatten_tree(tree, prefix: str = ""):
    """Yield ``(key_path, ndarray)`` for every leaf; ``None`` subtrees yield nothing."""
    if tree is None:
        return
    for key, child in _children(tree):
        yield from flatten_tree(child, _join(prefix, key))
    if not _is_node(tree):
        yield prefix or ROOT_KEY, _leaf_array(tree, prefix)


def _is_node(tree) -> bool:
    return isinstance(tree, (dict, list, tuple))


def _children(tree):
    """``(key, child)`` pairs of a container node; a leaf has none."""
    if isinstance(tree, dict):
        return [(_dict_key(k), v) for k, v in tree.items()]
    if _is_namedtuple(tree):
        return list(zip(tree._fields, tree))
    if isinstance(tree, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(tree)]
    return []


def _dict_key(k) -> str:
    key = str(k)
    if not key or "/" in key or key in (META_KEY, ROOT_KEY):
        raise ValueError(f"checkpoint dict keys must be non-empty and free of '/': got {k!r}")
    return key


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _leaf_array(leaf, where: str) -> np.ndarray:
    arr = np.asarray(leaf)
    if arr.dtype.hasobject:
        raise TypeError(f"checkpoint leaf {where or ROOT_KEY!r} is not numeric (dtype object)")
    return arr


def load_tree(path: Path, like, run_name: str | None = None):
    """A tree shaped like ``like`` with its leaves read from ``path`` (numpy arrays).

    Raises UserError naming the key path when the file lacks a leaf, has one ``like`` lacks, or
    stores a different shape or dtype. ``run_name`` only fills the retrain hint in messages.
    """
    path = Path(path)
    return decode_tree(_read(path, run_name), like, path, run_name)


def load_meta(path: Path) -> dict:
    """The metadata dict stored with the checkpoint."""
    path = Path(path)
    return decode_meta(_read(path, None), path)


def decode_tree(data: bytes, like, path: Path, run_name: str | None = None):
    """``load_tree`` on bytes already read (e.g. after checking their hash)."""
    with _open_npz(data, path, run_name) as npz:
        stored = {k for k in npz.files if k != META_KEY}
        expected = {k for k, _ in _leaf_specs(like)}
        extra = sorted(stored - expected)
        if extra:
            raise _mismatch(path, extra[0], "stored but not in the model", run_name)
        return _rebuild(like, "", npz, path, run_name)


def decode_meta(data: bytes, path: Path) -> dict:
    """``load_meta`` on bytes already read."""
    with _open_npz(data, path, None) as npz:
        if META_KEY not in npz.files:
            raise UserError(
                f"checkpoint '{path}' has no metadata: it was not written by alloop; retrain the run"
            )
        try:
            return json.loads(str(_get(npz, META_KEY, path, None)[()]))
        except (ValueError, IndexError) as e:
            raise _corrupt(path, e, None) from None


def _leaf_specs(like, prefix: str = ""):
    """``(key_path, leaf)`` for the leaves of ``like``, without converting them to arrays."""
    if like is None:
        return
    for key, child in _children(like):
        yield from _leaf_specs(child, _join(prefix, key))
    if not _is_node(like):
        yield prefix or ROOT_KEY, like


def _rebuild(like, prefix: str, npz, path: Path, run_name):
    """Walk ``like``, replacing each leaf with the stored array; keep container types."""
    if like is None:
        return None
    if isinstance(like, dict):
        return {
            k: _rebuild(v, _join(prefix, _dict_key(k)), npz, path, run_name)
            for k, v in like.items()
        }
    if _is_namedtuple(like):
        children = [
            _rebuild(v, _join(prefix, f), npz, path, run_name) for f, v in zip(like._fields, like)
        ]
        return type(like)(*children)
    if isinstance(like, (list, tuple)):
        children = [
            _rebuild(v, _join(prefix, str(i)), npz, path, run_name) for i, v in enumerate(like)
        ]
        return type(like)(children)
    return _load_leaf(like, prefix or ROOT_KEY, npz, path, run_name)


def _load_leaf(like, key: str, npz, path: Path, run_name) -> np.ndarray:
    if key not in npz.files:
        raise _mismatch(path, key, "missing from the file", run_name)
    arr = _get(npz, key, path, run_name)
    shape, dtype = _shape_dtype(like)
    if arr.shape != shape:
        raise _mismatch(
            path, key, f"shape {_shape(arr.shape)} stored, {_shape(shape)} expected", run_name
        )
    if arr.dtype != dtype:
        raise _mismatch(path, key, f"dtype {arr.dtype} stored, {dtype} expected", run_name)
    return arr


def _shape_dtype(like):
    """Shape and dtype of a ``like`` leaf; uses its attributes when it has them (jax arrays, specs)."""
    if hasattr(like, "shape") and hasattr(like, "dtype"):
        return tuple(like.shape), np.dtype(like.dtype)
    arr = np.asarray(like)
    return arr.shape, arr.dtype


def _shape(shape) -> str:
    return "(" + ",".join(str(n) for n in shape) + ")"


def _read(path: Path, run_name) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint '{path}' not found: {_retrain(path, run_name)}") from None
    except OSError as e:
        raise _corrupt(path, e, run_name) from None


def _open_npz(data: bytes, path: Path, run_name):
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (
        Exception
    ) as e:  # a damaged file can fail in zipfile, numpy or struct: all mean "corrupt"
        raise _corrupt(path, e, run_name) from None


def _get(npz, key: str, path: Path, run_name) -> np.ndarray:
    try:
        return npz[key]
    except Exception as e:  # bad CRC, truncated member, or an object array that would need pickle
        raise _corrupt(path, e, run_name) from None


def _mismatch(path: Path, key: str, detail: str, run_name) -> UserError:
    return UserError(
        f"checkpoint '{path}' does not match the model at {key}: {detail}; "
        f"the run's config changed since it was saved — {_retrain(path, run_name)}"
    )


def _corrupt(path: Path, err: Exception, run_name) -> UserError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UserError(f"checkpoint '{path}' is unreadable ({reason}): {_retrain(path, run_name)}")


def _retrain(path: Path, run_name) -> str:
    """The fix hint; the run name is guessed from ``RUN/checkpoints/ckpt-*.npz`` when not given."""
    if run_name is None:
        run_name = path.parent.parent.name if path.parent.name == "checkpoints" else "NAME"
    return f"retrain with `alloop train {run_name} --fresh`"
