"""A non-editable install has the demo datasets (#32 item 8): ``alloop demo`` ran only from a
source checkout, since the wheel shipped no data. The build (setup.py's build_py, what a wheel
holds) is run here into a temporary folder, and the demo runs from it with no source tree in
sight; `.ci/run` also builds the wheel and runs the demo from a fresh virtual environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    lib = tmp_path_factory.mktemp("build-lib")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return lib


def test_the_build_ships_every_bundled_dataset(built):
    bundled = sorted(p.parent.name for p in (ROOT / "datasets").glob("*/meta.json"))
    shipped = built / "alloop" / "datasets"
    assert sorted(p.parent.name for p in shipped.glob("*/meta.json")) == bundled
    for name in bundled:
        for f in (ROOT / "datasets" / name).glob("*.parquet"):
            assert (shipped / name / f.name).read_bytes() == f.read_bytes()


@pytest.mark.slow
def test_demo_runs_from_the_built_package(built, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(built), "ALLOOP_RUNS": str(tmp_path / "runs")}
    env.pop("ALLOOP_DATASETS", None)
    args = [sys.executable, "-m", "alloop", "demo", "--rounds", "1", "-k", "3", "--json"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rounds"][-1]["labels"] == 13
    where = subprocess.run(
        [sys.executable, "-c", "import alloop; print(alloop.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(built))  # the built copy ran, not the source tree


def test_no_datasets_names_the_fix(tmp_path, monkeypatch):
    from alloop.errors import UserError
    from alloop.io import datasets

    monkeypatch.setenv(datasets.DATASETS_ENV, str(tmp_path))
    with pytest.raises(UserError, match="install alloop from its wheel or source tree"):
        datasets.dataset_meta("diabetes")
