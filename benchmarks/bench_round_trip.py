"""The wait between rounds: ``alloop ingest`` (with its retrain), then ``alloop query -k 10``, as
whole processes.

A generated regression pool (50,000 rows x 26 float features, zstd Parquet), a run seeded with 50
labels and a test set; the run's first query (10 rows) is answered from the hidden truth. Then,
timed, each in a fresh process on a fresh copy of that run:

- ``ingest``: ``alloop ingest NAME filled.csv`` (validates, stores 10 labels, chooses s, retrains on
  60);
- ``query``: ``alloop query NAME -k 10`` (scores the pool, writes round 2);
- ``query again``: a second ``alloop query NAME -k 10`` on the unchanged model and pool (round 3);

for the linear model (``--model linear``, ``--s auto``), ``--model auto`` (the default) and an MLP
(``--model mlp --hidden 64,64``), and
``python -c "import jax, optax"`` alone for reference. Every timed process runs this file's
``--child`` mode, which imports alloop and then calls the CLI's ``main()`` with timers wrapped
around the use cases' parts (no change to alloop's code is needed to measure it). Each phase's time
is exclusive (its timed sub-phases subtracted):

- start: the interpreter's start up to this script's first line (wall clock minus what the child
  saw);
- imports: ``alloop.cli`` (typer, rich) and the command's module (JAX, optax, pyarrow, pandas);
- open: everything not in another phase (opening and locking the run, reading the pool's schema,
  labels, label validation, loading the checkpoint, history);
- s choice: ``choose_s.resolve_s``; SGDF: ``sgdf.fit``; tangent check: the residual, noise and loss
  after training; checkpoint: the commits and metrics inside a training;
- pool read (overlapped): the reader thread's time in ``pool.iter_batches`` (runs beside scoring);
- scoring: ``stream.stream_top`` (streaming the pool through the scorer, waiting on the reader);
- pick: the strategy's choice from the kept rows; commit: writing the query file and ``state.json``;
- compile (part of the above): XLA compilation time reported by JAX's monitoring events.

Each step's wall clock and its process's CPU time (user + system, all threads: on a machine shared
with other jobs the steadier of the two) are reported. The figures are medians over ``--reps``
repetitions (interleaved), after one untimed warm-up round that also fills the persistent
compilation cache (``$ALLOOP_CACHE_DIR``, a temporary folder here); ``cold`` is the first
repetition's total with an empty cache. The machine's load average is printed with the table: on a
shared machine read the ratios.

``--tree NAME=PATH`` (repeatable) measures the alloop found at PATH (put first on PYTHONPATH), e.g.
a ``git worktree`` of an older commit: the trees are measured in turn within every repetition, so
they share the machine's load. Without it, the installed alloop.

Usage: python benchmarks/bench_round_trip.py [--reps 3] [--models linear,mlp] [--rows 50000] [--tree
NAME=PATH ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = (
    "start",
    "imports",
    "open",
    "s choice",
    "SGDF",
    "tangent check",
    "checkpoint",
    "scoring",
    "pick",
    "commit",
)
MODELS = {
    "linear": ["--model", "linear"],
    "auto": ["--model", "auto"],  # the default of a regression run: linear, poly 2/3 or the MLP
    "mlp": ["--model", "mlp", "--hidden", "64,64"],
}
N_FEATURES, N_SEED, K = 26, 50, 10


# --- the child: one alloop command with phase timers ----------------------------------------------


def child(out: str, argv: list[str]) -> None:
    import threading

    t_start = time.perf_counter()
    times: dict[str, float] = {}
    local = threading.local()

    def add(name, dt):
        times[name] = times.get(name, 0.0) + dt

    def timed(name, fn, rename=None):
        def wrapper(*a, **kw):
            stack = local.__dict__.setdefault("stack", [])
            label = rename(stack) if rename else name
            stack.append([label, 0.0])
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                _, inner = stack.pop()
                add(label, dt - inner)
                if stack:
                    stack[-1][1] += dt

        return wrapper

    t = time.perf_counter()
    import alloop.cli  # noqa: F401  typer, rich

    command = argv[0]
    import jax  # what the command modules import

    import alloop.strategies as strategies_pkg
    from alloop.commands import ingest, query, train
    from alloop.core import sgdf, tangents
    from alloop.io import pool as poolio
    from alloop.io import rundir
    from alloop.strategies import stream
    from alloop.training import choose_s
    from alloop.training import fit as fitting

    add("imports", time.perf_counter() - t)

    compile_s = [0.0]

    def on_duration(event, duration, **kw):
        if "backend_compile" in event:
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)

    in_training = lambda stack: (
        "checkpoint" if any(name == "train" for name, _ in stack) else "commit"
    )  # noqa: E731
    choose_s.resolve_s = timed("s choice", choose_s.resolve_s)
    sgdf.fit = timed("SGDF", sgdf.fit)
    for mod, attr in (
        (tangents, "relative_residual"),
        (fitting, "residual_noise"),
        (fitting.objective, "per_example_loss"),
        (fitting.sgdf, "tangent_warnings"),
    ):
        setattr(mod, attr, timed("tangent check", getattr(mod, attr)))
    fitting.metrics = timed("checkpoint", fitting.metrics)
    rundir.commit = timed("commit", rundir.commit, in_training)
    rundir.append_history = timed("commit", rundir.append_history, in_training)
    wrapped_train = timed("train", train.train_locked)
    ingest.train_locked = query.train_locked = wrapped_train
    strategies_pkg.select = timed(
        "pick", strategies_pkg.select
    )  # the residual of select: the pick (and the strategy's set-up)
    stream.stream_top = timed("scoring", stream.stream_top)
    query.commit_query = timed("commit", query.commit_query)
    iter_batches = poolio.iter_batches

    def timed_batches(*a, **kw):
        it = iter_batches(*a, **kw)
        while True:
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                add("pool read (overlapped)", time.perf_counter() - t)
                return
            add("pool read (overlapped)", time.perf_counter() - t)
            yield b

    poolio.iter_batches = timed_batches

    sys.argv = ["alloop", *argv]
    t_cmd = time.perf_counter()
    code = 0
    try:
        alloop.cli.main()
    except SystemExit as e:
        code = e.code or 0
    t_end = time.perf_counter()
    named = sum(
        v for k, v in times.items() if k not in ("imports", "pool read (overlapped)", "train")
    )
    times["open"] = (
        times.pop("train", 0.0) + (t_end - t_cmd) - named
    )  # the residual: run, labels, checkpoint, validation
    times["compile (part)"] = compile_s[0]
    Path(out).write_text(
        json.dumps({"command": command, "code": code, "seen": t_end - t_start, "phases": times})
    )
    sys.exit(code)


# --- the parent: data, runs, timing ---------------------------------------------------------------


def make_data(folder: Path, rows: int, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    w = rng.normal(size=N_FEATURES)

    def target(x):
        return x @ w + 0.5 * np.sin(2 * x[:, 0]) + 0.3 * rng.normal(size=len(x))

    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float64)
    ids = np.arange(rows, dtype=np.int64) + 100_000
    cols = {f"f{j:02d}": x[:, j] for j in range(N_FEATURES)}
    truth = target(x)
    pd.DataFrame({"id": ids, **cols, "y": truth}).to_parquet(
        folder / "pool.parquet", index=False, compression="zstd"
    )
    xt = rng.normal(size=(2000, N_FEATURES))
    pd.DataFrame(
        {**{f"f{j:02d}": xt[:, j] for j in range(N_FEATURES)}, "y": target(xt)}
    ).to_parquet(folder / "test.parquet", index=False)
    pick = rng.choice(rows, N_SEED, replace=False)
    pd.DataFrame({"id": ids[pick], "y": truth[pick]}).to_csv(folder / "seed.csv", index=False)
    return pd.Series(truth, index=ids)


def alloop(args, env, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "alloop", *args], env=env, capture_output=True, text=True
    )
    if check and r.returncode != 0:
        raise SystemExit(f"alloop {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def fill(query_csv: Path, truth, out: Path) -> Path:
    import pandas as pd

    q = pd.read_csv(query_csv)
    pd.DataFrame({"id": q["id"], "y": truth.loc[q["id"]].to_numpy()}).to_csv(out, index=False)
    return out


def timed_child(argv, env, tmp: Path) -> dict:
    out = tmp / f"phases-{time.monotonic_ns()}.json"
    t = time.perf_counter()
    with open(out.with_suffix(".err"), "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(out), *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.read()}")
    rec = json.loads(out.read_text())
    rec["wall"] = wall
    rec["cpu"] = (
        usage.ru_utime + usage.ru_stime
    )  # the process's own CPU time: steadier than wall clock on a shared machine
    rec["phases"]["start"] = wall - rec["seen"]
    return rec


def import_jax(env) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import jax, optax"], env=env, check=True)
    return time.perf_counter() - t


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="linear,mlp")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH: measure the alloop in PATH (repeatable)",
    )
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"installed": None}
    tmp = Path(tempfile.mkdtemp(prefix="alloop-round-trip-"))
    try:
        envs = {}
        for tree, where in trees.items():
            env = {
                **os.environ,
                "ALLOOP_RUNS": str(tmp / tree / "runs"),
                "ALLOOP_CACHE_DIR": str(tmp / tree / "cache"),
                "JAX_PLATFORMS": "cpu",
                "COLUMNS": "200",
            }
            env.pop("ALLOOP_NO_CACHE", None)
            if where:
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(Path(where).resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]
                )
            envs[tree] = env
        truth = make_data(tmp, args.rows)
        results: dict = {
            "load_before": os.getloadavg(),
            "rows": args.rows,
            "reps": args.reps,
            "trees": {},
        }
        prepared = {}
        for tree, env in envs.items():
            for model in args.models.split(","):
                name = f"prep-{model}"
                alloop(
                    [
                        "init",
                        name,
                        "--pool",
                        str(tmp / "pool.parquet"),
                        "--target",
                        "y",
                        "--test",
                        str(tmp / "test.parquet"),
                        "--labels",
                        str(tmp / "seed.csv"),
                        *MODELS[model],
                    ],
                    env,
                )
                q = json.loads(alloop(["query", name, "-k", str(K), "--json"], env).stdout)
                prepared[tree, model] = (
                    tmp / tree / "runs" / name,
                    fill(Path(q["path"]), truth, tmp / f"filled-{tree}-{model}.csv"),
                )
        samples: dict = {key: {"ingest": [], "query": [], "query again": []} for key in prepared}
        jax_alone = []
        for rep in range(args.reps + 1):  # rep 0: the warm-up (cold cache), not in the medians
            jax_alone.append(import_jax(envs[next(iter(envs))]))
            for (tree, model), (src, filled) in prepared.items():
                env, name = envs[tree], f"r{rep}-{model}"
                shutil.copytree(src, src.parent / name)
                for step, argv in (
                    ("ingest", ["ingest", name, str(filled)]),
                    ("query", ["query", name, "-k", str(K)]),
                    ("query again", ["query", name, "-k", str(K)]),
                ):
                    samples[tree, model][step].append(timed_child(argv, env, tmp))
                print(
                    f"rep {rep} {tree} {model}: "
                    + ", ".join(
                        f"{s} {v[-1]['wall']:.2f}s" for s, v in samples[tree, model].items()
                    ),
                    file=sys.stderr,
                )
        results["load_after"] = os.getloadavg()
        results["import_jax_optax"] = statistics.median(jax_alone[1:] or jax_alone)
        for (tree, model), steps in samples.items():
            out = results["trees"].setdefault(tree, {}).setdefault(model, {})
            for step, recs in steps.items():
                timed_recs = recs[1:] or recs
                names = sorted({k for r in timed_recs for k in r["phases"]})
                out[step] = {
                    "wall": statistics.median(r["wall"] for r in timed_recs),
                    "cpu": statistics.median(r["cpu"] for r in timed_recs),
                    "cold": recs[0]["wall"],
                    "phases": {
                        k: statistics.median(r["phases"].get(k, 0.0) for r in timed_recs)
                        for k in names
                    },
                }
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(res: dict) -> None:
    print(
        f"\n{res['rows']:,}-row pool, {N_FEATURES} features, {N_SEED} labels + {K} returned; "
        f"medians of {res['reps']} (load average {res['load_before'][0]:.2f} before, "
        f"{res['load_after'][0]:.2f} after)"
    )
    print(f"`import jax, optax` alone: {res['import_jax_optax']:.2f} s\n")
    cols = [*PHASES, "pool read (overlapped)", "compile (part)"]
    print("| tree | model | step | wall s | CPU s | cold s | " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(cols))
    for tree, models in res["trees"].items():
        for model, steps in models.items():
            for step, r in steps.items():
                cells = [
                    f"{r['phases'].get(c, 0.0):.2f}" if r["phases"].get(c, 0.0) >= 0.005 else ""
                    for c in cols
                ]
                print(
                    (
                        f"| {tree} | {model} | {step} | {r['wall']:.2f} | {r['cpu']:.2f} | "
                        f"{r['cold']:.2f} | "
                    )
                    + " | ".join(cells)
                    + " |"
                )
    print()
    for tree, models in res["trees"].items():
        for model, steps in models.items():
            total = steps["ingest"]["wall"] + steps["query"]["wall"]
            cpu = steps["ingest"]["cpu"] + steps["query"]["cpu"]
            print(
                f"{tree} {model}: ingest + retrain + next query = {total:.2f} s ({cpu:.2f} s "
                f"CPU); a second query {steps['query again']['wall']:.2f} s "
                f"({steps['query again']['cpu']:.2f} s CPU)"
            )


if __name__ == "__main__":
    main()
