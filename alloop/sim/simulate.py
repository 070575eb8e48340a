"""``alloop simulate``: active learning replayed in memory on a labeled pool, strategy against
strategy.

For every strategy and repetition the loop starts from the same random initial labels (drawn from
the seed and the repetition only), asks the strategy for a batch, lets an oracle answer from the
pool's target column, retrains and records the test metric, until the label budget is spent. The
pool is held in memory and nothing goes through a run directory.

Finished (strategy, rep) curves are appended to ``DIR/curves.csv`` as they complete; a rerun skips
them, so an interrupted simulation resumes where it stopped. Randomness comes only from the seed:
the initial labels from (seed, rep), each round's candidate sample and draws from (seed, rep,
round), so the same seed gives the same numbers, in any order, with any number of worker processes
and on any engine (``sim.engines``).

Models: ``linear`` and ``poly`` are fitted in closed form (``ridge``); ``mlp`` is trained with SGDF
through the core every round (``mlp``), which is far slower. Strategies: the registry of
``alloop.strategies``, run through ``strategies.select`` exactly as ``alloop query`` runs them (the
candidate sample included); summary, tables and plot: ``summary``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from alloop import strategies
from alloop.config import default_model, default_s, parse_s
from alloop.errors import UserError
from alloop.io import rundir
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.sim import engines
from alloop.sim import summary as sim_summary
from alloop.sim.curve import round_of, round_with, run_curve, stop_signal
from alloop.sim.curves_file import (
    CONFIG_FILE,
    CURVE_COLUMNS,
    CURVES_FILE,
    SIGNAL_COLUMNS,
    append_curve,
    check_config,
    read_curves,
)
from alloop.sim.data import SimData, dataset_files, load_data, pool_name
from alloop.sim.learner import Learner, make_learner
from alloop.sim.settings import (
    DEFAULT_REPS,
    DEFAULT_STRATEGIES,
    SimSettings,
    check_settings,
    config_for,
    initial_rows,
    metric_name,
    model_of,
    round_seed,
    schedule,
    stop_rows,
    strategy_names,
)
from alloop.training import stopping

PROTOCOL = (
    2  # 2: strategies run through strategies.select over the pool file, as `alloop query` runs them
)


def simulate(
    data: SimData,
    settings: SimSettings,
    strategy_list: list[str],
    reps: int,
    out: Path,
    jobs: int | None = None,
    reporter: Reporter | None = None,
    stop: dict | None = None,
    engine: str = "local",
    address: str | None = None,
) -> dict:
    """Run every missing (strategy, rep) curve, then write the summary and the plot; returns the
    summary.

    ``stop`` overrides stopping thresholds (``training.stopping.StopRules``) for the stop report
    only: the
    curves record the signals, so other thresholds are replayed without running anything again.
    ``engine``: ``local`` (``jobs`` worker processes) or ``ray`` (``jobs`` actors on the Ray cluster
    at ``address``; None: the one this process is connected to, else a new local one): the same
    curves.
    SIGINT and SIGTERM stop it (``engines.stop_on_signals``); the finished curves stay for a rerun.
    """
    reporter = reporter or Reporter()
    try:
        rules = stopping.StopRules.from_dict(stop)
    except (TypeError, ValueError) as e:
        raise UserError(f"--stop: {e}") from None
    check_settings(settings, strategy_list, len(data.y_pool))
    if reps < 1:
        raise UserError("--reps must be at least 1")
    out = Path(out)
    with contextlib.ExitStack() as stack:
        stack.enter_context(engines.connected(engine, address))  # before anything is written
        stack.enter_context(engines.stop_on_signals())
        out.mkdir(parents=True, exist_ok=True)
        try:
            stack.enter_context(run_lock(out, wait=0.0))
        except UserError:
            raise UserError(
                f"{out} is in use by another alloop simulate: wait for it to finish, "
                "or pass another --out"
            ) from None
        return _simulate_locked(
            data, settings, strategy_list, reps, out, jobs, reporter, rules, engine, address
        )


def _simulate_locked(
    data,
    settings,
    strategy_list,
    reps,
    out: Path,
    jobs,
    reporter: Reporter,
    rules: stopping.StopRules,
    engine: str = "local",
    address: str | None = None,
) -> dict:
    config = {
        "data": {
            "name": data.name,
            "fingerprint": data.fingerprint(),
            "pool_rows": len(data.y_pool),
            "test_rows": len(data.y_test),
        },
        "settings": settings.to_dict(),
        "metric": metric_name(settings.task),
        "protocol": PROTOCOL,
    }
    check_config(out, config)
    expected = schedule(settings, len(data.y_pool))
    path = out / CURVES_FILE
    done = read_curves(path, expected)
    todo = [(s, r) for r in range(reps) for s in strategy_list if (s, r) not in done]
    if len(done) and todo:
        reporter.info(f"resuming: {len(done)} finished curves in {path}, {len(todo)} to go")
    t0 = time.perf_counter()
    with reporter.progress(
        f"simulating {len(todo)} curves on {data.name}", len(todo) * len(expected)
    ) as advance:
        curves = engines.run_all(data, settings, todo, jobs, advance, engine, address)
        with contextlib.closing(curves):  # an early end (a stop, an error) ends the workers now
            for rows in curves:
                append_curve(path, rows)
                done[(rows[0]["strategy"], rows[0]["rep"])] = rows
    keep = [r for s in strategy_list for rep in range(reps) for r in done[(s, rep)]]
    summary = sim_summary.summarize(
        keep, strategy_list, settings, data.name, metric_name(settings.task), rules
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    sim_summary.write_outputs(out, keep, summary)
    return summary


def run_simulation(
    *,
    dataset: str | None = None,
    pool: str | None = None,
    test: str | None = None,
    target: str = "target",
    id_col: str = "id",
    strategy_list: list[str] | None = None,
    reps: int = DEFAULT_REPS,
    out: str | None = None,
    jobs: int | None = None,
    model: dict | None = None,
    s: float | str | None = None,
    task: str | None = None,
    reporter: Reporter | None = None,
    stop: dict | None = None,
    engine: str = "local",
    address: str | None = None,
    **settings,
) -> dict:
    """The ``simulate`` use case: find the data (``dataset`` or ``pool`` + ``test``), then
    ``simulate``.

    A bundled dataset's ``demo`` defaults (model, s) and task apply unless given. Without them,
    model and s follow ``alloop init``'s policy (``config.default_model``, ``config.default_s``):
    auto model and s for regression, a linear model with s = 1 for classification.
    ``engine``/``address``: where the curves run (``simulate``).
    """
    engines.check_engine(engine, address)
    if dataset:
        if pool or test:
            raise UserError("pass either --dataset or --pool/--test, not both")
        pool, test, meta = dataset_files(dataset)
        target, id_col, name = meta.get("target", target), meta.get("id", id_col), dataset
        defaults = meta.get("demo", {})
        task = task or meta.get("task", "regression")
    else:
        if not (pool and test):
            raise UserError(
                "simulate needs --dataset NAME, or --pool FILE and --test FILE "
                "(both with the target column)"
            )
        name, defaults = pool_name(pool), {}
    task = task or "regression"
    s = parse_s(s) if s is not None else defaults.get("s")
    model = model or defaults.get("model") or {"kind": default_model(task, s)}
    s = s if s is not None else default_s(task, model.get("kind", "linear"))
    data = load_data(pool, test, target, id_col, name, task)
    sim_settings = SimSettings(model=dict(model), s=s, task=task, **settings)
    where = Path(out) if out else rundir.runs_root() / f"simulate-{name}"
    summary = simulate(
        data,
        sim_settings,
        list(strategy_list or DEFAULT_STRATEGIES[task]),
        reps,
        where,
        jobs,
        reporter,
        stop,
        engine,
        address,
    )
    return {**summary, "out": str(where), "markdown": (where / "summary.md").read_text()}
