"""Streaming scoring at scale: the pipelined top-k through the real pool reader equals one full
sort; the best rows of any split of the pool reduce to the whole's; the reader thread stops cleanly;
rows split over several (forced host) devices score as on one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from alloop.core import parallel
from alloop.io import pool as poolio
from alloop.io.prefetch import prefetch
from alloop.strategies import stream as streaming

FEATURES = ["a", "b", "c"]
FILES = [
    (0, 700, 300),
    (700, 701, 10),
    (701, 1999, 256),
    (1999, 2400, 1000),
]  # rows [start, stop), row group size


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """A directory pool of four files (one of a single row) with odd row groups and mixed column
    types."""
    rng = np.random.default_rng(0)
    n = FILES[-1][1]
    df = pd.DataFrame(
        {
            "id": rng.permutation(n).astype(np.int64) * 7 + 11,
            "a": rng.normal(size=n),
            "b": rng.normal(size=n).astype(np.float32),
            "c": rng.integers(-3, 4, n).astype(np.int32),  # few values: many tied scores
            "target": rng.normal(size=n),
        }
    )
    folder = tmp_path_factory.mktemp("pooldir")
    for j, (start, stop, rg) in enumerate(FILES):
        df.iloc[start:stop].to_parquet(folder / f"part-{j}.parquet", index=False, row_group_size=rg)
    return folder, df


def full_sort(df: pd.DataFrame, scores: np.ndarray, exclude, k: int) -> pd.DataFrame:
    """The reference: every row in memory, NaN last, then (score desc, id asc)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    keep = ~df["id"].isin(exclude).to_numpy()
    sub, s = df[keep].reset_index(drop=True), s[keep]
    order = np.lexsort((sub["id"].to_numpy(), -s))[:k]
    return sub.iloc[order].assign(score=s[order]).reset_index(drop=True)


def numpy_scorer(b: poolio.PoolBatch) -> np.ndarray:
    s = np.round(b.X[:, 2] + 0.5 * b.X[:, 1], 0).astype(np.float64)  # rounded: ties broken by id
    s[b.ids % 13 == 0] = np.nan  # NaN ranks last
    return s


@jax.jit
def _jax_score(x):
    return jnp.round(x[:, 2] + 0.5 * x[:, 1])


def check_kept(kept: streaming.Kept, want: pd.DataFrame) -> None:
    np.testing.assert_array_equal(kept.ids, want["id"].to_numpy())
    np.testing.assert_array_equal(kept.scores, want["score"].to_numpy())
    np.testing.assert_array_equal(kept.x, want[FEATURES].to_numpy(np.float32))
    rows = kept.rows.to_pandas()  # the pool's columns as stored, carried along with the kept rows
    pd.testing.assert_frame_equal(rows, want[["id", *FEATURES]].reset_index(drop=True))


@pytest.mark.parametrize(
    "buffer_rows", [1, 100, streaming.BUFFER_ROWS]
)  # merged at every batch .. only at the end
@pytest.mark.parametrize("batch_rows", [1, 7, 64, 333, 5000])
@pytest.mark.parametrize("k", [1, 25, 3000])
def test_streaming_topk_equals_full_sort(pool_dir, batch_rows, k, buffer_rows, monkeypatch):
    monkeypatch.setattr(streaming, "BUFFER_ROWS", buffer_rows)
    folder, df = pool_dir
    info = poolio.open_pool(folder, features=FEATURES)
    exclude = df["id"].to_numpy()[::97]
    kept = streaming.stream_top(info, numpy_scorer, exclude, k, batch_rows)
    want = full_sort(
        df,
        numpy_scorer(poolio.PoolBatch(df["id"].to_numpy(), df[FEATURES].to_numpy(np.float32))),
        exclude,
        k,
    )
    check_kept(kept, want)


@pytest.mark.parametrize("batch_rows", [64, 1000])
def test_device_scorer_topk_equals_full_sort(pool_dir, batch_rows):
    """Scores computed on the device in fixed-shape (padded) chunks, waited for one batch later."""
    folder, df = pool_dir
    info = poolio.open_pool(folder, features=FEATURES)
    x = df[FEATURES].to_numpy(np.float32)
    kept = streaming.stream_top(
        info,
        streaming.device_scorer(_jax_score, batch_rows),
        np.array([], np.int64),
        40,
        batch_rows,
    )
    check_kept(kept, full_sort(df, np.asarray(_jax_score(x), np.float64), [], 40))


def test_progress_counts_every_row(pool_dir):
    folder, df = pool_dir
    info = poolio.open_pool(folder, features=FEATURES)
    seen = []
    streaming.stream_top(info, numpy_scorer, df["id"].to_numpy()[:50], 5, 128, seen.append)
    assert sum(seen) == len(df)


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 2400])
def test_partition_tops_reduce_to_the_whole_streams_top(pool_dir, parts):
    """What the Ray engine relies on: the best rows of each part of the pool (any split, any order),
    reduced, are the rows one stream over the whole pool keeps, with their scores, features and
    stored columns."""
    import pyarrow as pa

    from alloop.strategies import distributed

    folder, df = pool_dir
    info = poolio.open_pool(folder, features=FEATURES)
    exclude = df["id"].to_numpy()[5::50]
    table = pa.Table.from_pandas(df[["id", *FEATURES]], preserve_index=False)
    cuts = np.linspace(0, len(df), parts + 1).astype(int)
    tops = [
        distributed.partition_top(
            table.slice(a, b - a), info, numpy_scorer, 30, streaming.excluder(exclude)
        )
        for a, b in zip(cuts[:-1], cuts[1:])
    ]
    seen = []
    kept = distributed.reduce(reversed(tops), info, 30, seen.append)
    check_kept(
        kept,
        full_sort(
            df,
            numpy_scorer(poolio.PoolBatch(df["id"].to_numpy(), df[FEATURES].to_numpy(np.float32))),
            exclude,
            30,
        ),
    )
    whole = streaming.stream_top(info, numpy_scorer, exclude, 30, 64)
    np.testing.assert_array_equal(kept.ids, whole.ids)
    assert sum(seen) == len(df)


def test_batches_are_full_across_files_and_row_groups(pool_dir):
    folder, df = pool_dir
    sizes = [
        len(b.ids)
        for b in poolio.iter_batches(poolio.open_pool(folder, features=FEATURES), batch_rows=256)
    ]
    assert sizes[:-1] == [256] * (len(sizes) - 1) and sum(sizes) == len(df)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_excluder(kind):
    ids = np.arange(100, 200)
    exclude = np.array([3, 150, 150, 199, 1000])
    if kind == "str":
        ids, exclude = ids.astype(str).astype(object), exclude.astype(str).astype(object)
    keep = streaming.excluder(exclude)
    np.testing.assert_array_equal(ids[keep(ids)], ids[~np.isin(ids, exclude)])
    assert keep(ids[:10]) is None  # nothing excluded: no copy
    assert streaming.excluder(exclude[:0])(ids) is None


def test_prefetch_raises_the_readers_error_and_stops_early():
    def boom():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        with prefetch(boom) as items:
            list(items)
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with prefetch(endless, depth=2) as items:
        assert next(items) == 0
    assert (
        closed.is_set()
    )  # leaving early closed the reader's iterator (its files) in the reader thread


# --- several devices (forced host devices, in a subprocess: the flag must precede jax's start) ----

MULTI = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from alloop.core import models, parallel, scorers
    from alloop.core.objective import Problem
    from alloop.training import fit as fitting
    assert jax.local_device_count() == 4, jax.devices()
    config = {"model": {"kind": "mlp", "hidden": [32, 16], "activation": "tanh"},
              "task": "regression", "targets": ["y"],
              "pool": {"features": ["f0", "f1", "f2", "f3", "f4"]},
              "standardizer": {"mean": [0.1] * 5, "std": [2.0] * 5}, "regularizer": "l2", "s": 1.0}
    rng = np.random.default_rng(0)
    params = fitting.build_model(config).init(jax.random.PRNGKey(1))
    tangent = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params
    )
    problem = fitting.build_problem(config, params)
    fn = scorers.sld(problem, params, tangent, np.ones(1, np.float32))
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    placed = parallel.placer(256, 4)(x[:100])
    assert len(placed.sharding.device_set) == 4 and placed.shape == (256, 5)
    assert len(fn(placed).sharding.device_set) == 4  # the scorer ran on all four
    one = parallel.score_rows(fn, x, 256, 1)
    four = parallel.score_rows(fn, x, 256, 4)
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-7)

    import pandas as pd, tempfile, pathlib
    from alloop.io import pool as poolio
    from alloop.strategies import Round, TrainedModel, builtin, stream as streaming
    d = pathlib.Path(tempfile.mkdtemp())
    pd.DataFrame({"id": np.arange(1000), **{f"f{j}": x[:, j] for j in range(5)}}).to_parquet(
        d / "p.parquet", row_group_size=300
    )
    info = poolio.open_pool(d / "p.parquet")
    tops = [
        streaming.stream_top(info, streaming.device_scorer(fn, 200, n), np.array([7, 8]), 50, 200)
        for n in (1, 2, 4)
    ]
    for t in tops[1:]:
        np.testing.assert_array_equal(t.ids, tops[0].ids)
        np.testing.assert_allclose(t.scores, tops[0].scores, rtol=1e-5)

    from alloop.core.models import Standardizer
    stats = Standardizer(np.zeros(5, np.float32), np.ones(5, np.float32))
    model = TrainedModel(
        problem=problem, params=params, tangent=tangent, noise=np.ones(1, np.float32), s=1.0
    )
    rounds = [Round("regression", stats, x[:3], np.zeros((3, 1)), 0, model, 96, n) for n in (1, 4)]
    picks = [builtin.sld_pick(tops[0], rnd, 10) for rnd in rounds]  # 50 candidates, uneven over 4
    np.testing.assert_array_equal(tops[0].ids[picks[1].idx], tops[0].ids[picks[0].idx])
    np.testing.assert_allclose(picks[1].scores, picks[0].scores, rtol=1e-5)
    print("ok")
""")


def test_sharded_scoring_equals_single_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", MULTI], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("n_rows", [0, 1, 5, 16384, 16385, 20000, 65536, 100001])
@pytest.mark.parametrize("devices", [1, 3, 8])
def test_even_chunk_covers_the_rows_with_little_padding(n_rows, devices):
    max_rows = 16384
    rows = parallel.even_chunk(n_rows, max_rows, devices)
    calls = -(-n_rows // rows)
    assert rows % devices == 0 and rows <= parallel.padded_rows(max_rows, devices)
    assert calls == max(-(-n_rows // max_rows), 0)  # no more calls than the cap needs
    assert calls * rows - n_rows <= max(
        calls * (devices + 1) - 1, 0
    )  # padding: under one row a call, plus the device rounding


def test_devices_beyond_the_machine_are_refused():
    from alloop.errors import UserError

    with pytest.raises(UserError, match="--devices"):
        streaming.check_devices(parallel.device_count() + 1)
