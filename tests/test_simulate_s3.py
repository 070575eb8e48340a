"""``alloop simulate`` over a pool and a test set in object storage (moto's S3 server on localhost, tests/conftest.py):
the same curves as over the same files on disk, and a missing bucket refused in one line."""

from __future__ import annotations

import shutil

import pandas as pd
from cli_helpers import assert_user_error, invoke
from s3_helpers import BUCKET, put_table

SIM = [
    "--strategies",
    "sld,random",
    "--initial",
    "5",
    "--budget",
    "15",
    "--batch",
    "5",
    "--reps",
    "2",
    "--s",
    "1",
    "--jobs",
    "1",
    "--json",
]


def test_simulate_over_s3_gives_the_curves_of_the_same_files_on_disk(
    s3, alloop_data, runs, tmp_path
):
    endpoint, client = s3
    df = pd.read_parquet(alloop_data.pool)
    folder = tmp_path / "pooldir"  # the pool as three files, the same objects in the bucket
    folder.mkdir()
    for j, part in enumerate((df.iloc[:90], df.iloc[90:170], df.iloc[170:])):
        part.to_parquet(folder / f"part-{j}.parquet", index=False, row_group_size=50)
        client.put_object(
            Bucket=BUCKET,
            Key=f"sim/pool/part-{j}.parquet",
            Body=(folder / f"part-{j}.parquet").read_bytes(),
        )
    put_table(client, pd.read_parquet(alloop_data.test), "sim/test.parquet")
    shutil.copy(alloop_data.test, tmp_path / "test.parquet")

    on_disk = invoke(
        [
            "simulate",
            "--pool",
            folder,
            "--test",
            tmp_path / "test.parquet",
            "--out",
            tmp_path / "disk",
            *SIM,
        ],
        runs,
    )
    assert on_disk.code == 0, on_disk.stderr
    remote = invoke(
        [
            "simulate",
            "--pool",
            f"s3://{BUCKET}/sim/pool",
            "--test",
            f"s3://{BUCKET}/sim/test.parquet",
            "--endpoint-url",
            endpoint,
            "--out",
            tmp_path / "s3",
            *SIM,
        ],
        runs,
    )
    assert remote.code == 0, remote.stderr

    a, b = (pd.read_csv(tmp_path / d / "curves.csv") for d in ("disk", "s3"))
    assert len(a) == 2 * 2 * 3 and set(a["strategy"]) == {"sld", "random"}
    pd.testing.assert_frame_equal(
        a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True
    )  # seconds: wall time
    assert on_disk.json()["strategies"].keys() == remote.json()["strategies"].keys()
    for name, fig in on_disk.json()["strategies"].items():
        assert remote.json()["strategies"][name]["final"] == fig["final"]


def test_simulate_from_a_missing_bucket_is_one_line(s3, alloop_data, runs, tmp_path):
    endpoint, _ = s3
    res = invoke(
        [
            "simulate",
            "--pool",
            "s3://no-such-bucket/pool",
            "--test",
            alloop_data.test,
            "--endpoint-url",
            endpoint,
            "--out",
            tmp_path / "out",
            *SIM,
        ],
        runs,
    )
    assert_user_error(res, "s3://no-such-bucket/pool", "bucket does not exist")
    assert not (tmp_path / "out").exists()


def test_simulate_with_a_test_set_in_a_missing_bucket_is_one_line(s3, alloop_data, runs, tmp_path):
    endpoint, _ = s3
    res = invoke(
        [
            "simulate",
            "--pool",
            alloop_data.pool,
            "--test",
            "s3://no-such-bucket/test.parquet",
            "--endpoint-url",
            endpoint,
            "--out",
            tmp_path / "out",
            *SIM,
        ],
        runs,
    )
    assert_user_error(res, "s3://no-such-bucket/test.parquet", "bucket does not exist")
    res = invoke(
        [
            "simulate",
            "--pool",
            alloop_data.pool,
            "--test",
            f"s3://{BUCKET}/no-such-test.parquet",
            "--endpoint-url",
            endpoint,
            "--out",
            tmp_path / "out",
            *SIM,
        ],
        runs,
    )
    assert_user_error(res, f"s3://{BUCKET}/no-such-test.parquet", "not found")
    assert not (tmp_path / "out").exists()
