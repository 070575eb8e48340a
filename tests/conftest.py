"""Shared fixtures: seeded generators and small problems built in code."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Tests never write into the user's compilation cache (alloop/core/compile_cache.py);
# test_round_trip.py turns it on, in a temporary folder, where it is the subject. Subprocesses
# inherit this.
os.environ["ALLOOP_NO_CACHE"] = "1"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- application tests (test_app.py, test_cli_*.py) --------------------------------------------


@pytest.fixture(scope="session")
def alloop_data(tmp_path_factory):
    """A small generated regression problem: pool, test set and seed labels (see cli_helpers)."""
    from cli_helpers import make_data

    return make_data(tmp_path_factory.mktemp("alloop-data"))


@pytest.fixture(scope="session")
def prepared_run(alloop_data, tmp_path_factory):
    """A run mid-cycle, built once: 3 seed labels, round 1 queried (5 rows), 3 of them ingested, 2
    outstanding."""
    from cli_helpers import FAST, fill, invoke

    runs = tmp_path_factory.mktemp("prepared-runs")
    d = alloop_data
    assert (
        invoke(
            ["init", "base", "--pool", d.pool, "--test", d.test, "--labels", d.seed, *FAST], runs
        ).code
        == 0
    )
    q = invoke(["query", "base", "-k", "5", "--json"], runs)
    assert q.code == 0, q.stderr
    filled = fill(q.json()["path"], d.truth, out=runs / "round1.csv", leave_blank=2)
    assert invoke(["ingest", "base", filled], runs).code == 0
    return runs / "base"


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty runs folder ($ALLOOP_RUNS) with the working directory set to its parent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALLOOP_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


@pytest.fixture
def run(prepared_run, runs):
    """A private copy of ``prepared_run`` named ``r`` under ``runs``."""
    from cli_helpers import copy_run

    return copy_run(prepared_run, runs, "r")


# --- object storage (test_ray_engine.py, test_simulate.py) -------------------------------------


@pytest.fixture(scope="session")
def aws_env():
    """Credentials for the local S3 endpoint, for this process and its children; no
    $AWS_ENDPOINT_URL from outside."""
    from s3_helpers import CREDENTIALS

    mp = pytest.MonkeyPatch()
    for k, v in CREDENTIALS.items():
        mp.setenv(k, v)
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def s3(aws_env):
    """A local S3 endpoint (moto's server on a free port of 127.0.0.1) with an empty bucket
    ``s3_helpers.BUCKET``: yields (endpoint URL, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer
    from s3_helpers import BUCKET, REGION

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()
