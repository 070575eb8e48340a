"""Shared fixtures: seeded generators and small problems built in code."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Tests never write into the user's compilation cache (alloop/core/compile_cache.py); test_round_trip.py
# turns it on, in a temporary folder, where it is the subject. Subprocesses inherit this.
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
    """A run mid-cycle, built once: 3 seed labels, round 1 queried (5 rows), 3 of them ingested, 2 outstanding."""
    from cli_helpers import FAST, fill, invoke

    runs = tmp_path_factory.mktemp("prepared-runs")
    d = alloop_data
    assert invoke(["init", "base", "--pool", d.pool, "--test", d.test, "--labels", d.seed, *FAST], runs).code == 0
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
