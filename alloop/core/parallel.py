"""Data parallelism over the local devices: each batch's rows are split evenly across a 1-D mesh.

Scoring: scorers are jitted functions of one batch ``x`` (their parameters closed over), so nothing
about them changes: a batch placed with a row-sharded ``NamedSharding`` makes XLA partition the
computation (every row's score depends on that row only), with the parameters replicated.

Training: the state and the labeled data are replicated, and every minibatch is constrained to be
row-sharded inside the jitted epoch (``constrain_rows``), so each device computes the gradient and
its tangent on its share of the rows and XLA all-reduces the sums. One device is the default and
takes the plain path in both.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "rows"


def device_count() -> int:
    """How many devices this process can score on."""
    return jax.local_device_count()


def row_sharding(n_devices: int) -> NamedSharding:
    """Rows split over the first ``n_devices`` local devices, columns whole."""
    devices = jax.local_devices()
    if not 1 <= n_devices <= len(devices):
        raise ValueError(f"asked for {n_devices} devices, {len(devices)} available")
    mesh = Mesh(np.array(devices[:n_devices]), (AXIS,))
    return NamedSharding(mesh, PartitionSpec(AXIS, None))


def mesh(n_devices: int) -> Mesh:
    """A 1-D mesh over the first ``n_devices`` local devices."""
    return row_sharding(n_devices).mesh


def replicate(tree, n_devices: int):
    """Every array leaf of ``tree`` placed whole on each of the first ``n_devices`` devices."""
    return jax.device_put(tree, NamedSharding(mesh(n_devices), PartitionSpec()))


def constrain_rows(n_devices: int) -> Callable:
    """tree -> tree, for use inside jit: every leaf's first axis split over the devices (identity
    for one)."""
    if n_devices == 1:
        return lambda tree: tree
    sharding = NamedSharding(mesh(n_devices), PartitionSpec(AXIS))
    return lambda tree: jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding), tree
    )


def padded_rows(batch_rows: int, n_devices: int) -> int:
    """The fixed batch shape: ``batch_rows`` rounded up to a multiple of the device count."""
    return -(-batch_rows // n_devices) * n_devices


def even_chunk(n_rows: int, max_rows: int, n_devices: int = 1) -> int:
    """Rows per call that split ``n_rows`` into equal calls of at most ``max_rows`` (a device
    multiple): 20,000 rows at 16,384 a call become two calls of 10,000, not 32,768 rows with 12,768
    of padding."""
    calls = max(-(-n_rows // max_rows), 1)
    return padded_rows(max(-(-n_rows // calls), 1), n_devices)


def placer(batch_rows: int, n_devices: int = 1) -> Callable[[np.ndarray], object]:
    """x (m ≤ rows, d) -> the batch padded to the fixed shape (repeating its last row), on the
    devices.

    With one device the padded numpy array is returned as is (the jitted scorer transfers it).
    """
    rows = padded_rows(batch_rows, n_devices)
    sharding = row_sharding(n_devices) if n_devices > 1 else None

    def place(x: np.ndarray):
        m = x.shape[0]
        if m > rows:
            raise ValueError(f"batch of {m} rows is larger than the fixed shape {rows}")
        if m < rows:
            pad = (
                np.repeat(x[-1:], rows - m, axis=0) if m else np.zeros((rows, x.shape[1]), x.dtype)
            )
            x = np.concatenate([x, pad])
        return x if sharding is None else jax.device_put(x, sharding)

    return place


def score_rows(fn: Callable, x: np.ndarray, batch_rows: int, n_devices: int = 1) -> np.ndarray:
    """``fn`` applied to every row of ``x`` in fixed-shape batches over ``n_devices`` devices (numpy
    out)."""
    place = placer(batch_rows, n_devices)
    out = [
        np.asarray(fn(place(x[i : i + batch_rows])))[: len(x[i : i + batch_rows])]
        for i in range(0, len(x), batch_rows)
    ]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
