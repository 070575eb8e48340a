"""Shared pieces of the application tests: a tiny regression pool, running the CLI, filling query files.

Two ways to run a command: ``run_alloop`` starts the installed ``alloop`` in a subprocess (what users
run); ``invoke`` uses typer's CliRunner in this process (fast, for the many error cases). Both give a
``Result`` with ``code``, ``stdout`` and ``stderr``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from alloop.cli import app
from alloop.io.rundir import RUNS_ENV, run_files_digest

FEATURES = ("x0", "x1", "x2")
WEIGHTS = np.array([1.5, -2.0, 0.5])
FIRST_ID = 1000
# Small trainings: a handful of labels would otherwise be trained for fitting.MIN_STEPS (2000) steps.
FAST = ["--epochs", "1", "--min-steps", "150", "--lr", "0.05"]


@dataclass
class Data:
    """The files of a generated problem and the hidden truth the simulated labeler answers from."""

    dir: Path
    pool: Path
    test: Path
    seed: Path
    truth: pd.Series  # target by id


def make_data(folder: Path, n: int = 240, n_test: int = 80, n_seed: int = 3, seed: int = 0) -> Data:
    """pool.parquet (id, x0..x2, a text column, hidden target), test.parquet and a seed-label CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    y = x @ WEIGHTS + 0.05 * rng.normal(size=n)
    ids = np.arange(FIRST_ID, FIRST_ID + n)
    pool = pd.DataFrame(
        {
            "id": ids,
            **{f: x[:, j] for j, f in enumerate(FEATURES)},
            "region": ["north", "south"] * (n // 2),
            "target": y,
        }
    )
    pool.to_parquet(folder / "pool.parquet", index=False)
    xt = rng.normal(size=(n_test, len(FEATURES)))
    test = pd.DataFrame({**{f: xt[:, j] for j, f in enumerate(FEATURES)}, "target": xt @ WEIGHTS})
    test.to_parquet(folder / "test.parquet", index=False)
    pool[["id", "target"]].iloc[:n_seed].to_csv(folder / "seed.csv", index=False)
    return Data(
        folder,
        folder / "pool.parquet",
        folder / "test.parquet",
        folder / "seed.csv",
        pool.set_index("id")["target"],
    )


# --- running the command -----------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def alloop_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m alloop``."""
    script = Path(sys.executable).with_name("alloop")
    return [str(script)] if script.exists() else [sys.executable, "-m", "alloop"]


def run_alloop(
    args: list, cwd: Path, runs: Path, command: list[str] | None = None, timeout: float = 120
) -> Result:
    """Run the installed command in a subprocess, with $ALLOOP_RUNS = ``runs``."""
    env = {**os.environ, RUNS_ENV: str(runs), "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}
    proc = subprocess.run(
        [*(command or alloop_command()), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def invoke(args: list, runs: Path) -> Result:
    """Run a command in this process with typer's CliRunner (the working directory is the caller's)."""
    res = CliRunner().invoke(
        app, [str(a) for a in args], env={RUNS_ENV: str(runs), "COLUMNS": "200"}, prog_name="alloop"
    )
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Result(res.exit_code, res.stdout, res.stderr)


def assert_user_error(res: Result, *needles: str) -> str:
    """Exit code 2, one line on stderr (no traceback) containing every needle, and nothing on
    stdout: with ``--json`` on the command line, exactly that error as one JSON object."""
    assert res.code == 2, f"exit code {res.code}, stderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    if res.stdout.startswith("{"):  # the command was given --json
        assert json.loads(res.stdout) == {"error": lines[0][len("error: ") :], "exit_code": 2}
    else:
        assert res.stdout == "", res.stdout
    return lines[0]


# --- run files and query files -----------------------------------------------------------------


def digest(run_path: Path) -> dict[str, str]:
    return run_files_digest(run_path)


def read_any(path: Path) -> pd.DataFrame:
    """A query file as written: csv, parquet or jsonl."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True)


def fill(query_file: Path, truth: pd.Series, out: Path | None = None, leave_blank: int = 0) -> Path:
    """The simulated labeler: fill the target column from the truth, in the query file's own format.

    The last ``leave_blank`` rows stay blank (they stay outstanding).
    """
    query_file = Path(query_file)
    out = Path(out) if out else query_file.with_name("filled-" + query_file.name)
    q = read_any(query_file)
    values = truth.loc[q["id"].to_numpy()].to_numpy().astype(float)
    if leave_blank:
        values[len(values) - leave_blank :] = np.nan
    q["target"] = values
    if out.suffix == ".csv":
        q.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        q.to_parquet(out, index=False)
    else:
        q.to_json(out, orient="records", lines=True)
    return out


def copy_run(src: Path, runs: Path, name: str = "r") -> Path:
    """A private copy of a prepared run under ``runs`` (its pool stays where it was)."""
    dst = runs / name
    shutil.copytree(src, dst)
    return dst
