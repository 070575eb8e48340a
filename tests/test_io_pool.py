"""The pool reader: schema checks, streaming batches, moments, ids, row lookup."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alloop.errors import UserError
from alloop.io import pool as pool_mod
from alloop.io.pool import (
    check_fingerprint,
    check_unique_ids,
    feature_moments,
    iter_batches,
    missing_ids,
    open_pool,
    require_ids,
    scan_ids,
    take_rows,
)


def write(path, df, row_group_size=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size
    )
    return path


def text(path, content):
    path.write_text(content)
    return path


def small(n=10, start=0, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n, dtype=np.int64)
    return pd.DataFrame(
        {
            "id": ids,
            "x1": rng.normal(size=n),
            "name": [f"r{i}" for i in ids],
            "x2": rng.integers(0, 5, n).astype(np.int32),
            "y": rng.normal(size=n),
        }
    )


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory):
    """300k rows over 3 files with 7k-row row groups; x0 has a large offset to test stability."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(1)
    n = 300_000
    df = pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "x0": 1e6 + rng.normal(size=n) * 1e-2,
            "x1": rng.normal(size=n) * 3 - 7,
            "x2": rng.integers(-50, 50, n),
            "const": np.full(n, 0.1),
        }
    )
    for k in range(3):
        write(
            root / f"part-{k}.parquet",
            df.iloc[k * 100_000 : (k + 1) * 100_000],
            row_group_size=7_000,
        )
    return root, df


def test_open_single_file_defaults(tmp_path):
    p = write(tmp_path / "p.parquet", small())
    info = open_pool(p, targets=("y",))
    assert info.path == str(p.resolve()) and info.files == (str(p.resolve()),)
    assert info.id_kind == "int" and info.features == ("x1", "x2") and info.targets == ("y",)
    assert info.n_rows == 10 and len(info.fingerprint) == 64


def test_features_exclude_stored_pandas_index(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pandas(small().set_index("name")), p)
    assert "__index_level_0__" not in open_pool(p).features


def test_directory_pool_is_recursive_sorted_and_skips_hidden(tmp_path):
    write(tmp_path / "b" / "2.parquet", small(5, 20))
    write(tmp_path / "a.parquet", small(5, 0))
    write(tmp_path / "b" / "1.parquet", small(5, 10))
    write(tmp_path / ".hidden.parquet", small(5, 99))
    write(tmp_path / "_tmp" / "x.parquet", small(5, 99))
    (tmp_path / "_SUCCESS").write_text("")
    info = open_pool(tmp_path)
    assert [f.split("/")[-1] for f in info.files] == ["a.parquet", "1.parquet", "2.parquet"]
    assert info.n_rows == 15
    assert scan_ids(info).tolist() == list(range(5)) + list(range(10, 15)) + list(range(20, 25))


def test_hive_partitioned_directory_streams_and_names_a_partition_key_it_cannot_read(tmp_path):
    write(tmp_path / "region=1" / "part-0.parquet", small(5, 0))
    write(tmp_path / "region=2" / "part-0.parquet", small(5, 10))
    info = open_pool(tmp_path, features=["x1", "x2"], targets=("y",))
    assert info.n_rows == 10 and sorted(scan_ids(info).tolist()) == list(range(5)) + list(
        range(10, 15)
    )
    for kwargs in ({"features": ["x1", "region"]}, {"targets": ("region",)}, {"id_col": "region"}):
        with pytest.raises(
            UserError,
            match=r"'region' .* is a directory partition key .* write 'region' into the Parquet files",
        ):
            open_pool(tmp_path, **kwargs)
    with pytest.raises(
        UserError, match="has no feature column 'nope'"
    ):  # other missing columns keep their message
        open_pool(tmp_path, features=["x1", "nope"])


def test_fingerprint_ignores_rows_but_not_schema(tmp_path):
    write(tmp_path / "a.parquet", small(5))
    fp = open_pool(tmp_path).fingerprint
    write(tmp_path / "b.parquet", small(7, 100, seed=3))
    grown = open_pool(tmp_path)
    assert grown.n_rows == 12 and grown.fingerprint == fp
    check_fingerprint(grown, fp, "exp")
    changed = small(5).assign(x2=lambda d: d.x2.astype(np.float64))
    other = open_pool(write(tmp_path.parent / (tmp_path.name + "-other") / "a.parquet", changed))
    assert other.fingerprint != fp
    with pytest.raises(
        UserError,
        match="pool schema changed since `alloop init exp`.*restore the pool or init a new run",
    ):
        check_fingerprint(other, fp, "exp")
    assert open_pool(tmp_path, features=["x1"]).fingerprint != fp


def test_named_features_and_str_ids(tmp_path):
    df = small().assign(id=lambda d: [f"k{i}" for i in d.id])
    info = open_pool(write(tmp_path / "p.parquet", df), features=["x2", "x1"])
    assert info.id_kind == "str" and info.features == ("x2", "x1")
    b = next(iter_batches(info))
    assert b.ids.dtype == object and b.ids[0] == "k0"
    np.testing.assert_allclose(b.X[:, 1], df.x1.to_numpy(np.float32))


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        (lambda d: d / "missing.parquet", {}, "pool '.*missing.parquet' not found: pass --pool"),
        (lambda d: d, {}, "has no .parquet files"),
        (lambda d: text(d / "x.parquet", "id,x\n1,2\n"), {}, "not a readable Parquet file"),
        (
            lambda d: write(d / "p.parquet", small()),
            {"id_col": "key"},
            r"no id column 'key' \(columns: id, x1, name, x2, y\): pass --id-col NAME",
        ),
        (
            lambda d: write(d / "p.parquet", small()),
            {"id_col": "x1"},
            "id column 'x1' has type double.*--id-col",
        ),
        (
            lambda d: write(d / "p.parquet", small()),
            {"features": ["x9"]},
            "no feature column 'x9'.*fix --features",
        ),
        (
            lambda d: write(d / "p.parquet", small()),
            {"features": ["name"]},
            "feature 'name' has type (large_)?string, not a number",
        ),
        (
            lambda d: write(d / "p.parquet", small()),
            {"features": ["id"]},
            "both a feature and the id",
        ),
        (lambda d: write(d / "p.parquet", small()), {"features": []}, "no features given"),
        (lambda d: write(d / "p.parquet", small()), {"targets": ("z",)}, "no target column 'z'"),
        (
            lambda d: write(d / "p.parquet", small()[["id", "name"]]),
            {},
            "no numeric feature columns",
        ),
        (lambda d: write(d / "p.parquet", small().iloc[:0]), {}, "has no rows"),
    ],
)
def test_open_pool_errors(tmp_path, setup, kwargs, message):
    with pytest.raises(UserError, match=message):
        open_pool(setup(tmp_path), **kwargs)


def test_truncated_file_is_a_user_error(tmp_path):
    p = write(tmp_path / "p.parquet", small(1000))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(UserError, match="not a readable Parquet file"):
        open_pool(p)


def test_file_damaged_after_open_is_a_user_error_while_streaming(tmp_path):
    p = write(tmp_path / "p.parquet", small(1000))
    info = open_pool(p)
    data = bytearray(p.read_bytes())
    data[4:200] = b"\x00" * 196  # clobber the first data pages; the footer still parses
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a readable Parquet file"):
        list(iter_batches(info))


@pytest.mark.parametrize(
    "other, detail",
    [
        (
            lambda d: d.assign(x2=d.x2.astype(np.float64)),
            "column 'x2' is int32 in the first, double in the second",
        ),
        (lambda d: d.drop(columns="y"), r"only in the first: \['y'\]"),
    ],
)
def test_differing_schemas_are_refused(tmp_path, other, detail):
    write(tmp_path / "a.parquet", small())
    write(tmp_path / "b.parquet", other(small(10, 50)))
    with pytest.raises(
        UserError, match=f"'a.parquet' and 'b.parquet' have different schemas.*{detail}"
    ):
        open_pool(tmp_path)


def test_batches_are_bounded_typed_and_complete(big_pool):
    root, df = big_pool
    info = open_pool(root)
    assert info.features == ("x0", "x1", "x2", "const")
    sizes, ids = [], []
    for b in iter_batches(info, batch_rows=5_000):
        assert b.X.dtype == np.float32 and b.X.flags.c_contiguous and b.X.shape == (len(b.ids), 4)
        assert b.ids.dtype == np.int64 and b.Y is None
        sizes.append(len(b.ids))
        ids.append(b.ids)
    assert max(sizes) <= 5_000 and sum(sizes) == len(df)
    np.testing.assert_array_equal(np.concatenate(ids), df.id.to_numpy())


def test_batches_never_exceed_batch_rows_inside_big_row_groups(tmp_path):
    info = open_pool(write(tmp_path / "p.parquet", small(50_000), row_group_size=50_000))
    assert {len(b.ids) for b in iter_batches(info, batch_rows=1_000)} == {1_000}


def test_only_needed_columns_are_read(tmp_path, monkeypatch):
    info = open_pool(write(tmp_path / "p.parquet", small()), targets=("y",))
    asked = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(
        pq.ParquetFile,
        "iter_batches",
        lambda self, **kw: (asked.append(kw["columns"]), real(self, **kw))[1],
    )
    list(iter_batches(info))
    list(iter_batches(info, with_targets=True))
    scan_ids(info)
    assert asked == [["id", "x1", "x2"], ["id", "x1", "x2", "y"], ["id"]]


def test_targets_numeric_with_nulls_and_string_targets(tmp_path):
    df = small(4).assign(y=[1.0, None, 3.0, 4.0], label=["a", None, "b", "a"])
    info = open_pool(write(tmp_path / "p.parquet", df), features=["x1"], targets=("y",))
    Y = next(iter_batches(info, with_targets=True)).Y
    assert Y.dtype == np.float64 and Y.shape == (4, 1) and np.isnan(Y[1, 0]) and Y[3, 0] == 4.0
    info = open_pool(tmp_path / "p.parquet", features=["x1"], targets=("label", "y"))
    Y = next(iter_batches(info, with_targets=True)).Y
    assert Y.dtype == object and Y[:, 0].tolist() == ["a", None, "b", "a"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, None, 1e300])
def test_nonfinite_feature_names_column_and_id(tmp_path, bad):
    df = small(20, start=100)
    df["x1"] = df["x1"].astype(object)
    df.loc[17, "x1"] = bad
    df["x1"] = df["x1"].astype(np.float64)
    info = open_pool(write(tmp_path / "p.parquet", df))
    with pytest.raises(
        UserError, match=r"missing or non-finite value in feature 'x1' \(id 117\): clean the pool"
    ):
        list(iter_batches(info))


def test_null_int_feature_is_reported(tmp_path):
    t = pa.table({"id": [1, 2, 3], "x": pa.array([1, None, 3], pa.int64())})
    pq.write_table(t, tmp_path / "p.parquet")
    with pytest.raises(UserError, match=r"feature 'x' \(id 2\)"):
        list(iter_batches(open_pool(tmp_path / "p.parquet")))


def test_null_id_is_reported(tmp_path):
    t = pa.table({"id": pa.array([1, None], pa.int64()), "x": [1.0, 2.0]})
    pq.write_table(t, tmp_path / "p.parquet")
    with pytest.raises(UserError, match="missing id in column 'id'"):
        scan_ids(open_pool(tmp_path / "p.parquet"))


def test_moments_match_numpy_on_full_data(big_pool):
    root, df = big_pool
    mean, std = feature_moments(open_pool(root), batch_rows=4_096)
    X = df[["x0", "x1", "x2", "const"]].to_numpy(np.float64)
    assert mean.dtype == np.float64 and std.dtype == np.float64
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std[:3], X[:, :3].std(axis=0), rtol=1e-9)
    assert std[3] == 0.0 and mean[3] == 0.1


def test_chan_merge_beats_naive_sums_on_offset_data():
    """The merge stays exact where sum-of-squares would cancel catastrophically."""
    rng = np.random.default_rng(0)
    X = 1e9 + rng.normal(size=(10_000, 1))
    n, mean, m2 = 0, np.zeros(1), np.zeros(1)
    for chunk in np.array_split(X, 37):
        n, mean, m2 = pool_mod._chan_merge(n, mean, m2, chunk)
    np.testing.assert_allclose(np.sqrt(m2 / n), X.std(axis=0), rtol=1e-6)


def test_duplicate_ids_across_files(tmp_path):
    write(tmp_path / "a.parquet", small(5))
    write(tmp_path / "b.parquet", small(5, start=3))
    info = open_pool(tmp_path)
    with pytest.raises(UserError, match="duplicate id 3 in column 'id'"):
        check_unique_ids(info)
    check_unique_ids(open_pool(tmp_path / "a.parquet"))


def test_take_rows_in_requested_order(big_pool):
    root, df = big_pool
    info = open_pool(root)
    ids = np.array([250_001, 7, 99_999, 7, 123_456])
    got = take_rows(info, ids)
    assert list(got.columns) == ["id", "x0", "x1", "x2", "const"]
    assert got.id.tolist() == ids.tolist()
    expect = df.set_index("id").loc[ids].reset_index()
    pd.testing.assert_frame_equal(got, expect, check_dtype=True)


def test_take_rows_with_targets_and_str_ids(tmp_path):
    df = small().assign(id=lambda d: [f"k{i}" for i in d.id])
    info = open_pool(write(tmp_path / "p.parquet", df), targets=("y",))
    got = take_rows(info, np.array(["k3", "k0"], dtype=object), with_targets=True)
    assert got.id.tolist() == ["k3", "k0"] and got.y.tolist() == [df.y[3], df.y[0]]
    empty = take_rows(info, np.array([], dtype=object), with_targets=True)
    assert list(empty.columns) == ["id", "x1", "x2", "y"] and len(empty) == 0


def test_take_rows_missing_ids_listed(big_pool):
    info = open_pool(big_pool[0])
    with pytest.raises(
        UserError,
        match=r"^3 ids are not in the pool \(e.g. 991000, 992000, -1\): check the file's id column$",
    ):
        take_rows(info, np.array([5, 991_000, 992_000, -1]))
    with pytest.raises(UserError, match=r"^id 991000 is not in the pool: check"):
        require_ids(info, [1, 991_000])
    assert missing_ids(info, [1, 2, 400_000, 400_000]).tolist() == [400_000]
    require_ids(info, [0, 299_999])


def test_take_rows_stops_reading_once_all_found(big_pool, monkeypatch):
    info = open_pool(big_pool[0])
    calls = []
    real = pool_mod._parquet_file
    monkeypatch.setattr(pool_mod, "_parquet_file", lambda f, *a: (calls.append(f), real(f, *a))[1])
    take_rows(info, [1, 2])
    assert len(calls) == 1
