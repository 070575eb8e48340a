"""Class labels of a classification run: the mapping between the user's labels and output indices.

The mapping is a list of label strings (normalized with ``labels.class_label``, so 1, 1.0 and "1"
are one class); class ``i`` is output ``i`` of the model. It is fixed at init from an explicit
``--classes`` list (kept in the order given) or, without one, from the seed labels and the test
set (sorted: numbers by value, then text). It only ever grows, at the end (``--add-class`` on
ingest), so a class never changes index and trained weights stay where they are; the output layer
grows with it (``grow_tree``). Files in and out always carry the user's labels, never indices.

No files here: pure lists and numpy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from alloop.errors import UserError
from alloop.io.labels import class_label

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def normalize(values: Iterable) -> list[str]:
    """Every value as its class string (1, 1.0, "1.0" and "1" are all "1")."""
    return [class_label(v) for v in np.ravel(np.asarray(values, dtype=object))]


def sort_key(label: str):
    """Numbers by value first (so "2" < "10"), then text in code-point order."""
    return (0, float(label), label) if _NUMBER.fullmatch(label.strip()) else (1, 0.0, label)


def sorted_classes(labels: Iterable[str]) -> list[str]:
    return sorted(set(labels), key=sort_key)


def initial_classes(
    targets, seed_values=(), test_values=(), explicit: list | None = None
) -> list[str]:
    """The mapping of a new run: ``explicit`` as given, else the sorted union of seed and test
    labels.

    With ``explicit``, a seed or test label outside it is an error (a typo in either is caught at
    init). A run needs at least two classes and exactly one target column.
    """
    check_targets(targets)
    seen = normalize(seed_values) + normalize(test_values)
    if explicit:
        classes = normalize(explicit)
        dup = [c for i, c in enumerate(classes) if c in classes[:i]]
        if dup:
            raise UserError(f"--classes names class {dup[0]!r} twice: list each class once")
        extra = unknown(classes, seen)
        if extra:
            raise UserError(
                f"the seed labels or the test set hold class {extra[0]!r}, which --classes does "
                f"not list ({', '.join(classes)}): add it to --classes or fix the file"
            )
    else:
        classes = sorted_classes(seen)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise UserError(
            "a classification run needs at least two classes and the seed labels and test set "
            f"give {found}: list them with --classes a,b,..."
        )
    return classes


def check_targets(targets) -> None:
    """A classification run has exactly one target column (the class label)."""
    if len(targets) != 1:
        raise UserError(
            f"classification takes exactly one target column, got {len(targets)} "
            f"({', '.join(targets)}): pass --target NAME"
        )


def unknown(classes: list[str], values) -> list[str]:
    """The labels among ``values`` that are not in ``classes``, sorted."""
    known = set(classes)
    return sorted_classes(v for v in normalize(values) if v not in known)


def extend(classes: list[str], values) -> list[str]:
    """``classes`` with the unknown labels of ``values`` appended (sorted), so old indices keep
    their class."""
    return [*classes, *unknown(classes, values)]


def to_indices(classes: list[str], values) -> np.ndarray:
    """Class indices (int32) of labels; a label outside the mapping is a ValueError (validate
    first)."""
    index = {c: i for i, c in enumerate(classes)}
    labels = normalize(values)
    missing = [v for v in labels if v not in index]
    if missing:
        raise ValueError(f"label {missing[0]!r} is not one of the run's classes {classes}")
    return np.array([index[v] for v in labels], np.int32).reshape(len(labels))


def to_labels(classes: list[str], indices) -> np.ndarray:
    """The user's labels (str objects) of class indices."""
    return np.array([classes[int(i)] for i in np.ravel(indices)], dtype=object)


def grow_leaf(old, like) -> np.ndarray:
    """``old`` zero-padded to the shape of ``like`` (each axis may only grow): new classes start at
    zero."""
    old = np.asarray(old)
    shape = tuple(np.shape(like))
    if old.shape == shape:
        return old
    if old.ndim != len(shape) or any(a > b for a, b in zip(old.shape, shape)):
        raise ValueError(f"cannot grow an array of shape {old.shape} to {shape}")
    out = np.zeros(shape, old.dtype)
    out[tuple(slice(0, n) for n in old.shape)] = old
    return out


def grow_tree(tree, like):
    """A checkpoint tree saved with fewer classes, padded to the structure of ``like`` (same tree,
    more outputs).

    Only the output layer's leaves (weights (h, K), biases (K,)) and their tangent and optimizer
    moments differ; their new class entries are zero: logit 0 for the new class at first, the
    existing classes' weights exactly as trained.
    """
    import jax  # local: the rest of this module needs no jax

    return jax.tree_util.tree_map(grow_leaf, tree, like)
