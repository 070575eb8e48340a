"""The wait between rounds (issue 18): the persistent compilation cache, commands that never start JAX,
and SGDF that stops once converged. Timings are benchmarks/bench_round_trip.py's; here only behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import alloop_command, copy_run
from core_helpers import flat_linear, rel_err, ridge_closed_form, ridge_problem

from alloop.core import compile_cache, sgdf
from alloop.io.rundir import RUNS_ENV


def _env(runs: Path, cache: Path | None) -> dict:
    env = {**os.environ, RUNS_ENV: str(runs), "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}
    env.pop(compile_cache.NO_CACHE_ENV, None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache is None:
        env[compile_cache.NO_CACHE_ENV] = "1"
    else:
        env[compile_cache.DIR_ENV] = str(cache)
    return env


def _alloop(args: list, runs: Path, cache: Path | None) -> dict:
    proc = subprocess.run(
        [*alloop_command(), *map(str, args)],
        env=_env(runs, cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if "--json" in args else {}


def _files(folder: Path) -> set:
    return (
        {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
        if folder.exists()
        else set()
    )


def test_cache_is_filled_then_used_and_changes_no_output(prepared_run, tmp_path):
    """train + query without the cache, with an empty one (filled), and with the filled one (only hits):
    the query files and checkpoints are byte-identical in all three."""
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    outputs = []
    for name, where in (("off", None), ("cold", cache), ("warm", cache)):
        run = copy_run(prepared_run, runs, name)
        before = _files(cache)
        _alloop(["train", name, "--fresh", "--json"], runs, where)
        q = _alloop(["query", name, "-k", "5", "--json"], runs, where)
        state = json.loads((run / "state.json").read_text())
        outputs.append((Path(q["path"]).read_bytes(), state["checkpoint_sha256"]))
        if name == "off":
            assert not cache.exists()
        elif name == "cold":
            assert len(_files(cache)) > 5, "the compiled programs were not cached"
        else:
            assert _files(cache) == before, "a warm run compiled something again (a cache miss)"
    assert outputs[0] == outputs[1] == outputs[2]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.NO_CACHE_ENV, raising=False)
    monkeypatch.delenv(compile_cache.DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "alloop" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.cache_dir() == tmp_path / "home" / ".cache" / "alloop" / "jax"
    monkeypatch.setenv(compile_cache.DIR_ENV, str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine" / "jax"
    monkeypatch.setenv(compile_cache.NO_CACHE_ENV, "1")
    assert compile_cache.cache_dir() is None


NO_JAX = """
import sys
from alloop.cli import main
sys.argv = ["alloop", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
print("JAX-IMPORTED" if any(m == "jax" or m.startswith(("jax.", "jaxlib", "optax")) for m in sys.modules) else "NO-JAX", code)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["status", "r"],
        ["status", "r", "--json"],
        ["ingest", "r", "LABELS", "--no-train"],
        ["verify", "r"],
    ],
)
def test_commands_that_need_no_model_never_import_jax(run, runs, tmp_path, args):
    labels = tmp_path / "late.csv"
    outstanding = next(iter(json.loads((run / "state.json").read_text())["outstanding"]))
    labels.write_text(
        f"id,target\n{outstanding},1.5\n"
    )  # one outstanding row answered: stored, not trained on
    argv = [str(labels) if a == "LABELS" else a for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", NO_JAX, *argv],
        env=_env(runs, tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last.split() == ["NO-JAX", "0"], (last, proc.stderr)


def test_the_query_command_does_import_jax(run, runs, tmp_path):
    """The check above can fail: a command that scores the pool does import JAX."""
    proc = subprocess.run(
        [sys.executable, "-c", NO_JAX, "query", "r", "-k", "2"],
        env=_env(runs, None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip().splitlines()[-1].split() == ["JAX-IMPORTED", "0"], proc.stderr


# --- SGDF stops when converged --------------------------------------------------------------------


def _leaves(state) -> list:
    import jax

    return [
        np.asarray(x)
        for x in jax.tree_util.tree_leaves((state.params, state.tangent, state.opt_state))
    ]


def test_chunked_epochs_take_the_same_steps_as_one_epoch_per_call():
    """make_epochs (up to c epochs per compiled call) repeats the per-epoch loop: same keys, same steps."""
    prob, data = ridge_problem(np.random.default_rng(0), n=50, d=4)
    cfg = sgdf.TrainConfig(epochs=30, batch_size=16, lr=0.05)
    one, rep1 = sgdf.fit(prob, data, 0.5, cfg)
    many, rep2 = sgdf.fit(prob, data, 0.5, cfg, chunk=7)
    for a, b in zip(_leaves(one), _leaves(many)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert [r.epoch for r in rep2] == list(range(30))
    np.testing.assert_allclose([r.loss for r in rep1], [r.loss for r in rep2], rtol=1e-4)
    np.testing.assert_allclose(
        [r.tangent_norm for r in rep1], [r.tangent_norm for r in rep2], rtol=1e-4
    )


def test_sgdf_stops_once_converged_at_the_ridge_solution_and_a_resumed_run_stops_there_too():
    """Full-batch ridge: SGDF stops well before its budget, at a chunk's end, where θ and θ̇ match the
    closed form (an independent reference); the chunk before had not met the rule; a run resumed at a
    chunk boundary takes the same steps and stops at the same epoch with the same state."""
    prob, data = ridge_problem(np.random.default_rng(1), n=40, d=4)
    s, chunk = 2.0, 50
    cfg = sgdf.TrainConfig(epochs=4000, batch_size=64, lr=0.05)
    rule = sgdf.StopRule(grad_tol=1e-4, residual_tol=1e-3)
    states = {}

    def keep(state, rep):
        states[rep.epoch + 1] = state

    state, reps = sgdf.fit(prob, data, s, cfg, chunk=chunk, stop=rule, on_epoch=keep)
    done = len(reps)
    assert done < cfg.epochs / 2 and done % chunk == 0
    theta, tdot = ridge_closed_form(data, s)
    assert rel_err(flat_linear(state.params), theta.ravel()) < 1e-3
    assert rel_err(flat_linear(state.tangent), tdot.ravel()) < 5e-3
    g, r = (
        float(v)
        for v in sgdf.convergence(
            prob, states[done - chunk].params, states[done - chunk].tangent, jnp.float32(s), data
        )
    )
    assert g > rule.grad_tol or r > rule.residual_tol  # not converged one chunk earlier
    resumed, rest = sgdf.fit(
        prob, data, s, cfg, state=states[chunk], start_epoch=chunk, chunk=chunk, stop=rule
    )
    assert chunk + len(rest) == done
    for a, b in zip(_leaves(resumed), _leaves(state)):
        np.testing.assert_array_equal(a, b)


# --- the pool's features, cached while the pool is unchanged ---------------------------------------


def test_feature_cache_serves_the_same_floats_and_never_a_changed_pool(
    alloop_data, tmp_path, monkeypatch
):
    import shutil

    from alloop.io import feature_cache
    from alloop.io import pool as poolio

    path = tmp_path / "pool.parquet"
    shutil.copy(alloop_data.pool, path)
    info = poolio.open_pool(str(path), "id", ["x0", "x1", "x2"])
    ids = np.array([1007, 1000, 1100, 1007])
    direct = poolio.take_rows(info, ids)[["x0", "x1", "x2"]].to_numpy(np.float32)
    cached = feature_cache.features(info, ids, tmp_path / "cache")  # a miss: built from the pool
    np.testing.assert_array_equal(cached, direct)
    assert cached.dtype == np.float32
    read = []
    real = poolio.iter_batches
    monkeypatch.setattr(poolio, "iter_batches", lambda *a, **k: read.append(1) or real(*a, **k))
    np.testing.assert_array_equal(feature_cache.features(info, ids, tmp_path / "cache"), direct)
    assert not read, "an unchanged pool was read again"
    assert (
        feature_cache.features(info, np.array([1, 1000]), tmp_path / "cache") is None
    )  # an id not in the pool
    # the pool changes (same size and columns, new values): the entry is not used
    import pandas as pd

    df = pd.read_parquet(path)
    df["x0"] = df["x0"] + 1.0
    df.to_parquet(path, index=False)
    info = poolio.open_pool(str(path), "id", ["x0", "x1", "x2"])
    changed = feature_cache.features(info, ids, tmp_path / "cache")
    np.testing.assert_array_equal(
        changed, poolio.take_rows(info, ids)[["x0", "x1", "x2"]].to_numpy(np.float32)
    )
    assert read, "a changed pool was served from the cache"
    assert len(list((tmp_path / "cache" / "pools").rglob("*.npz"))) == 1  # the stale entry is gone
