"""End to end: a base run, two user runs inheriting it, their first queries, ingest, and fold-back."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cli_helpers import FAST, assert_user_error, digest, fill, invoke, read_any

from alloop.commands import common
from alloop.core import scorers
from alloop.io import rundir
from alloop.training import fit as fitting


def _query(runs, name, k=6):
    res = invoke(["query", name, "-k", str(k), "--strategy", "sld-topk", "--json"], runs)
    assert res.code == 0, res.stderr
    return res.json()


def test_base_users_and_fold_back(alloop_data, runs):
    d = alloop_data
    assert (
        invoke(
            ["init", "base", "--pool", d.pool, "--test", d.test, "--labels", d.seed, *FAST], runs
        ).code
        == 0
    )
    q = _query(runs, "base")
    assert invoke(["ingest", "base", fill(q["path"], d.truth, out=runs / "b1.csv")], runs).code == 0
    for user in ("alice", "bob"):
        res = invoke(["init", user, "--base", "base", "--test", d.test, "--json"], runs)
        assert res.code == 0, res.stderr
    # before any user label, θ = θ0 and θ̇ = θ̇0: the first query ranks by the base's SLD
    base = rundir.open_run(str(runs / "base"))
    tree, meta = common.load_checkpoint(base)
    info = common.open_pool_of(base)
    pool = pd.read_parquet(d.pool)
    labeled = set(rundir.read_labels(base)["id"]) | set(int(i) for i in base.outstanding)
    cand = pool[~pool["id"].isin(labeled)]
    fn = scorers.sld(
        fitting.build_problem(base.config, tree["params"]),
        tree["params"],
        tree["tangent"],
        np.asarray(meta["noise"], np.float32),
    )
    sld = np.asarray(fn(cand[list(info.features)].to_numpy(np.float32)))
    expected = cand["id"].to_numpy()[np.lexsort((cand["id"].to_numpy(), -sld))][:6]
    firsts = {}
    for user in ("alice", "bob"):
        q = _query(runs, user)
        got = read_any(q["path"])["id"].to_numpy()
        firsts[user] = q["path"]
        np.testing.assert_array_equal(got, expected)
        rnd = invoke(["query", user, "-k", "6", "--strategy", "random", "--json"], runs).json()
        assert set(read_any(rnd["path"])["id"]) != set(got)  # differs from random picks
    # users label and train (full-batch Newton by default), then fold back into the base
    for user in ("alice", "bob"):
        filled = fill(firsts[user], d.truth, out=runs / f"{user}.csv")
        res = invoke(["ingest", user, filled, "--json"], runs)
        assert res.code == 0, res.stderr
        assert res.json()["trained"]["residual"] < 1e-4
    before = rundir.open_run(str(runs / "base")).n_labels
    res = invoke(["base-update", "base", "--from", "alice", "--from", "bob", "--json"], runs)
    assert res.code == 0, res.stderr
    assert (
        res.json()["labels"] == before + 6
    )  # both users picked the same rows: each label counted once
    st = invoke(["status", "alice", "--json"], runs).json()
    assert st["base"]["base_unchanged"] is False
    assert invoke(["verify", "alice"], runs).code == 0


def test_base_update_refuses_a_run_that_is_not_its_user(alloop_data, runs, run):
    d = alloop_data
    assert invoke(["init", "other", "--pool", d.pool, "--labels", d.seed, *FAST], runs).code == 0
    before = digest(run)
    assert_user_error(
        invoke(["base-update", "r", "--from", "other"], runs), "was not made with --base"
    )
    assert digest(run) == before


def test_user_run_needs_a_trained_base(alloop_data, runs):
    d = alloop_data
    assert invoke(["init", "untrained", "--pool", d.pool, *FAST], runs).code == 0
    assert_user_error(
        invoke(["init", "u", "--base", "untrained"], runs), "no up-to-date trained model"
    )
    assert not (runs / "u").exists()
