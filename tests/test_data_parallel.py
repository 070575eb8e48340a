"""Data-parallel training over several (forced host) devices: SGDF with every minibatch split over
the devices trains the same θ and θ̇ as one device, still satisfies the ridge closed form, and is
really partitioned (the compiled epoch works on a share of the rows and all-reduces); `alloop train
--devices` writes the checkpoint one device would have.

The flag that makes the host CPU look like several devices must be set before JAX starts, so the
checks run in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import copy_run, run_alloop

from alloop.io import rundir

TESTS = Path(__file__).parent
FORCED = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}

CORE = textwrap.dedent("""
    import sys
    sys.path.insert(0, TESTS)
    import numpy as np, jax, jax.numpy as jnp
    from alloop.training import fit as fitting
    from alloop.core import parallel, sgdf
    from alloop.core.objective import make_data
    from core_helpers import cosine, flat_linear, rel_err, ridge_closed_form, ridge_problem
    assert jax.local_device_count() == 4, jax.devices()

    def leaves(state):
        return [np.asarray(a) for a in jax.tree_util.tree_leaves((state.params, state.tangent))]

    def same(a, b, tol):
        for u, v in zip(leaves(a), leaves(b)):
            assert np.max(np.abs(u - v)) <= tol * (np.max(np.abs(u)) + 1e-12), np.max(np.abs(u - v))

    # 1. ridge: the tangent over 2, 3 and 4 devices (34 rows per step: uneven over 3 and 4) is the
    # closed form's
    prob, data = ridge_problem(np.random.default_rng(1), n=203)
    theta, tdot = ridge_closed_form(data, 1.0)
    cfg = sgdf.TrainConfig(optimizer="adam", lr=0.05, epochs=60, batch_size=34)
    one, _ = sgdf.fit(prob, data, 1.0, cfg)
    for d in (2, 3, 4):
        state, _ = sgdf.fit(prob, data, 1.0, cfg, devices=d)
        assert all(len(a.sharding.device_set) == d for a in jax.tree_util.tree_leaves(state.params))
        assert rel_err(flat_linear(state.params), theta) < 5e-3
        assert cosine(flat_linear(state.tangent), tdot) >= 0.999, cosine(
            flat_linear(state.tangent), tdot
        )
        same(one, state, 1e-4)

    # 2. an MLP with the Gauss-Newton tangent, a resumed second half included
    config = {"model": {"kind": "mlp", "hidden": [16, 8], "activation": "tanh"},
              "task": "regression", "targets": ["y"],
              "pool": {"features": [f"f{j}" for j in range(5)]},
              "standardizer": {"mean": [0.0] * 5, "std": [1.0] * 5}, "regularizer": "l2", "s": 1.0}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(301, 5)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=5)).astype(np.float32)
    params = fitting.build_model(config).init(jax.random.PRNGKey(1))
    mlp = fitting.build_problem(config, params)
    mdata = make_data(x, y)
    cfg = sgdf.TrainConfig(epochs=6, batch_size=32)
    one, _ = sgdf.fit(mlp, mdata, 1.0, cfg, params=params)
    four, _ = sgdf.fit(mlp, mdata, 1.0, cfg, params=params, devices=4)
    same(one, four, 1e-4)
    resumed_from = None
    def keep(st, rep):
        global resumed_from
        if rep.epoch == 2:
            resumed_from = jax.tree_util.tree_map(np.asarray, st)
    sgdf.fit(mlp, mdata, 1.0, cfg, params=params, devices=2, on_epoch=keep)
    rest, _ = sgdf.fit(mlp, mdata, 1.0, cfg, state=resumed_from, start_epoch=3, devices=2)
    same(one, rest, 1e-4)

    # 3. really partitioned: each device's program sees 33 of the 66 rows and sums across devices
    opt = sgdf.make_optimizer(cfg, 100)
    def compiled(d):
        ep = sgdf.make_epoch(prob, opt, 203, sgdf.TrainConfig(batch_size=66), d)
        args = (sgdf.init_state(prob.model.init(None), opt), data, jnp.float32(1.0))
        if d > 1:
            args = parallel.replicate(args, d)
        return ep.lower(*args, sgdf.epoch_key(0, 0)).compile().as_text()
    two, single = compiled(2), compiled(1)
    assert "all-reduce" in two and "all-reduce" not in single
    assert "f32[33,4]" in two and "f32[33,4]" not in single
    print("ok")
""")


def _run(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FORCED}
    prelude = f"TESTS = {str(TESTS)!r}\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_data_parallel_sgdf_equals_one_device():
    out = _run(CORE)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _checkpoint_arrays(run_path: Path) -> dict:
    run = rundir.open_run(str(run_path))
    with np.load(run.checkpoint_path) as npz:
        return {k: npz[k] for k in npz.files if k.startswith(("params", "tangent"))}


def test_cli_train_on_two_devices_writes_the_one_device_checkpoint(prepared_run, runs, monkeypatch):
    for k, v in FORCED.items():
        monkeypatch.setenv(k, v)
    copy_run(prepared_run, runs, "one")
    copy_run(prepared_run, runs, "two")
    for name, d in (("one", "1"), ("two", "2")):
        r = run_alloop(
            ["train", name, "--fresh", "--s", "1", "--devices", d, "--json"], runs.parent, runs
        )  # s fixed: well posed
        assert r.code == 0, r.stderr
    a, b = _checkpoint_arrays(runs / "one"), _checkpoint_arrays(runs / "two")
    assert a.keys() == b.keys() and a
    # 6 labels, 150 Adam steps: at the optimum Adam divides tiny gradients by their tiny second
    # moment, which amplifies the different order of float sums to ~0.3% (the core test above checks
    # 1e-4 where it is well posed)
    for group in ("params", "tangent"):
        keys = [k for k in a if k.startswith(group)]
        u, v = (np.concatenate([t[k].ravel() for k in keys]) for t in (a, b))
        assert np.linalg.norm(v - u) <= 1e-2 * np.linalg.norm(u), (group, u, v)
    bad = run_alloop(["train", "two", "--devices", "5"], runs.parent, runs)
    assert bad.code == 2 and "--devices 5" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", [["train", "r"], ["ingest", "r", "nothing.csv"]])
def test_devices_beyond_the_machine_are_refused_before_anything_changes(run, runs, command):
    from cli_helpers import invoke

    before = rundir.run_files_digest(run)
    r = invoke([*command, "--devices", "64"], runs)
    assert r.code == 2 and "--devices 64" in r.stderr
    assert rundir.run_files_digest(run) == before
