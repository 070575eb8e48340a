"""alloop from Python, the way notebook users work: the README's example, run as written."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

import alloop


def test_the_readme_notebook_example(runs, alloop_data):
    d = alloop_data
    run = alloop.init_run(
        "houses",
        str(d.pool),
        target="target",
        test=str(d.test),
        labels=str(d.seed),
        train={"epochs": 1, "min_steps": 150, "lr": 0.05},
    )
    batch = run.query(k=5)
    assert isinstance(batch, alloop.QueryResult) and batch.round == 1 and batch.path.exists()
    assert (
        list(batch.rows["id"]) == list(pd.read_csv(batch.path)["id"])
        and batch.rows["target"].isna().all()
    )
    batch.rows["target"] = d.truth.loc[
        batch.rows["id"]
    ].to_numpy()  # the labels, from wherever they come
    done = run.ingest(batch.rows)
    assert isinstance(done, alloop.IngestResult) and (
        done.added,
        done.labels,
        done.outstanding,
    ) == (5, 8, 0)
    assert np.isfinite(done.trained["test_rmse"])
    st = run.status()
    assert (st["labels"], st["round"], st["stale"]) == (8, 1, False)
    assert len(run.labels()) == 8 and alloop.open_run("houses").status() == st


def test_mistakes_raise_user_error_and_change_nothing(runs, alloop_data):
    from cli_helpers import digest

    with pytest.raises(alloop.UserError, match="no run named"):
        alloop.open_run("nope")
    run = alloop.init_run(
        "r",
        str(alloop_data.pool),
        labels=str(alloop_data.seed),
        train={"epochs": 1, "min_steps": 50},
    )
    before = digest(run.path)
    with pytest.raises(alloop.UserError, match="was never queried"):
        run.ingest(pd.DataFrame({"id": [1100], "target": [1.0]}))
    with pytest.raises(alloop.UserError, match="DataFrame or a file path"):
        run.ingest([1, 2])
    assert digest(run.path) == before


def test_importing_alloop_starts_no_jax():
    import subprocess

    code = "import sys, alloop; alloop.RunConfig; print('jax' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
