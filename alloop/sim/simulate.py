"""``alloop simulate``: active learning replayed in memory on a labeled pool, strategy against strategy.

For every strategy and repetition the loop starts from the same random initial labels (drawn from
the seed and the repetition only), asks the strategy for a batch, lets an oracle answer from the
pool's target column, retrains and records the test metric, until the label budget is spent. The
pool is held in memory and nothing goes through a run directory.

Finished (strategy, rep) curves are appended to ``DIR/curves.csv`` as they complete; a rerun skips
them, so an interrupted simulation resumes where it stopped. Randomness comes only from the seed:
the initial labels from (seed, rep), each round's candidate sample and draws from (seed, rep, round), so the same
seed gives the same numbers, in any order and with any number of worker processes.

Models: ``linear`` and ``poly`` are fitted in closed form (``ridge``); ``mlp`` is trained with SGDF
through the core every round (``mlp``), which is far slower. Strategies: the registry of
``alloop.strategies``, run through ``strategies.select`` exactly as ``alloop query`` runs them (the
candidate sample included); summary, tables and plot: ``summary``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import hashlib
import io
import json
import multiprocessing
import os
import queue as queue_mod
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alloop import strategies
from alloop.config import MODEL_KINDS, PoolSpec, RunConfig, default_model, default_s, parse_s
from alloop.core import sgdf
from alloop.errors import UserError
from alloop.io import atomic, datasets, rundir, tables
from alloop.io import pool as poolio
from alloop.io.lock import run_lock
from alloop.reporting import Reporter
from alloop.sim import auto as sim_auto
from alloop.sim import ridge
from alloop.sim import sgdf as sim_sgdf
from alloop.sim import summary as sim_summary
from alloop.strategies import research
from alloop.training import classmap, stopping
from alloop.training import fit as fitting

CURVE_COLUMNS = ("strategy", "rep", "n_labels", "metric", "seconds")
SIGNAL_COLUMNS = stopping.SIGNALS  # the stopping signals of each round (blank: none)
CURVES_FILE = "curves.csv"
CONFIG_FILE = "config.json"
DEFAULT_STRATEGIES = {
    "regression": ("herding", "sld", "sld-topk", "random", "greedy", "igs", "committee", "emcm"),
    "classification": ("margin", "sld", "herding", "entropy", "random", "greedy"),
}
PROTOCOL = (
    2  # 2: strategies run through strategies.select over the pool file, as `alloop query` runs them
)
DEFAULT_REPS = 20  # 5 repetitions cannot separate the 1–3% differences measured in docs/results.md


# --- data and settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class SimData:
    """A labeled pool and a test set, held in memory (float64)."""

    name: str
    features: tuple[str, ...]
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    ids: np.ndarray | None = None  # the pool's ids, in file order (row i of x_pool has ids[i])
    pool: str | None = None  # the pool file the strategies stream, as in a live query
    id_col: str = "id"
    target: str = "target"

    def open_pool(self) -> poolio.PoolInfo:
        """The pool as ``alloop query`` opens it: features only, the target column never read by a strategy."""
        if self.pool is None:
            raise ValueError(
                "this SimData was made from arrays: load it with load_data to stream its pool"
            )
        return poolio.open_pool(
            self.pool, id_col=self.id_col, features=list(self.features), targets=(self.target,)
        )

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Pool rows of the given ids."""
        rows = pd.Index(self.ids).get_indexer(ids)
        assert (rows >= 0).all(), "a strategy picked an id that is not in the pool"
        return rows.astype(np.int64)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for arr in (self.x_pool, self.y_pool, self.x_test, self.y_test):
            h.update(
                json.dumps(list(arr)).encode()
                if arr.dtype == object
                else np.ascontiguousarray(arr, np.float64).tobytes()
            )
        h.update(json.dumps(self.features).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class SimSettings:
    """What defines a curve; stored in DIR/config.json and checked on resume."""

    initial: int = 10
    budget: int = 200
    batch: int = 10
    seed: int = 0
    model: dict = field(default_factory=lambda: {"kind": "linear"})
    s: float | str = (
        1.0  # a number, or "auto"/"loocv" (linear/poly regression): chosen every round as `alloop train` does
    )
    task: str = "regression"

    def to_dict(self) -> dict:
        return asdict(self)


def load_data(
    pool: str,
    test: str,
    target: str = "target",
    id_col: str = "id",
    name: str | None = None,
    task: str = "regression",
) -> SimData:
    """Read a pool (with its target column) and a test set whole."""
    info = poolio.open_pool(pool, id_col=id_col, targets=(target,))
    xs, ys, ids = [], [], []
    for batch in poolio.iter_batches(info, with_targets=True):
        xs.append(batch.X.astype(np.float64))
        ys.append(batch.Y)
        ids.append(batch.ids)
    y_pool = np.concatenate(ys)[:, 0] if ys else np.zeros(0)
    if task == "classification":
        if any(v is None or (isinstance(v, float) and not np.isfinite(v)) for v in y_pool):
            raise UserError(
                f"pool '{pool}' has a missing value in target '{target}': simulate needs every row labeled"
            )
        y_pool = np.asarray(classmap.normalize(y_pool), dtype=object)
    elif y_pool.dtype == object or not np.all(np.isfinite(y_pool.astype(np.float64))):
        raise UserError(
            f"pool '{pool}' has a missing or non-numeric value in target '{target}': simulate needs every row labeled "
            "(a class label? pass --task classification)"
        )
    df = tables.read_test_set(test, list(info.features), [target], task)
    y_test = (
        np.asarray(classmap.normalize(df[target]), dtype=object)
        if task == "classification"
        else df[target].to_numpy(np.float64)
    )
    return SimData(
        name or Path(pool).parent.name,
        tuple(info.features),
        np.concatenate(xs),
        y_pool if task == "classification" else y_pool.astype(np.float64),
        df[list(info.features)].to_numpy(np.float64),
        y_test,
        np.concatenate(ids) if ids else np.zeros(0, np.int64),
        str(pool),
        id_col,
        target,
    )


def dataset_files(name: str) -> tuple[str, str, dict]:
    """(pool, test, meta) of a bundled dataset under datasets/NAME."""
    meta = datasets.dataset_meta(name)
    folder = datasets.datasets_dir() / name
    return str(folder / "pool.parquet"), str(folder / "test.parquet"), meta


def check_settings(settings: SimSettings, strategies_: list[str], n_pool: int) -> None:
    """Refuse settings that cannot run, naming the fix."""
    if settings.initial < 2:
        raise UserError(
            "--initial must be at least 2: the first model needs labels to have a tangent"
        )
    if settings.batch < 1:
        raise UserError("--batch must be at least 1")
    if settings.budget <= settings.initial:
        raise UserError(f"--budget ({settings.budget}) must exceed --initial ({settings.initial})")
    if settings.initial >= n_pool:
        raise UserError(
            f"--initial ({settings.initial}) must be smaller than the pool ({n_pool} rows)"
        )
    kind = settings.model.get("kind", "linear")
    if kind not in MODEL_KINDS:
        raise UserError(f"unknown --model {kind!r}: choose linear, poly, mlp or auto")
    if settings.task not in ("regression", "classification"):
        raise UserError(f"unknown --task {settings.task!r}: choose regression or classification")
    if isinstance(settings.s, str):
        if settings.s not in ("auto", "loocv") or kind == "mlp" or settings.task != "regression":
            raise UserError(
                "--s must be a positive number, or auto/loocv with a linear or poly regression model (an MLP or classifier "
                "takes a number: choosing s by SGDF cross-validation every round is too slow to simulate)"
            )
    elif not (np.isfinite(settings.s) and settings.s > 0):
        raise UserError(f"--s must be a positive number, got {settings.s}")
    if kind == "auto" and (settings.task != "regression" or not isinstance(settings.s, str)):
        raise UserError(
            "--model auto chooses among linear, polynomial and MLP models by the cross-validated loss of --s auto: "
            "use it for regression with --s auto (or loocv: linear and polynomial only)"
        )
    unknown = [
        s for s in strategies_ if s not in strategies.REGISTRY and s not in strategies.ALIASES
    ]
    if unknown:
        raise UserError(
            f"unknown strategy {unknown[0]!r}: choose from {', '.join(strategy_names(settings.task))}"
        )
    other = [s for s in strategies_ if settings.task not in strategies.get(s).tasks]
    if other:
        raise UserError(
            f"strategy {other[0]!r} does not apply to {settings.task}: choose from {', '.join(strategy_names(settings.task))}"
        )
    if not strategies_:
        raise UserError("--strategies is empty: name at least one, e.g. sld,random")


def model_of(kind: str, *, degree: int = 3, hidden=(64, 64)) -> dict:
    """A simulation model spec from ``--model``, ``--degree`` and ``--hidden``."""
    return {
        "kind": kind,
        **({"degree": degree} if kind == "poly" else {}),
        **({"hidden": list(hidden)} if kind == "mlp" else {}),
    }


def metric_name(task: str) -> str:
    """What a curve records: test RMSE for regression, the test error rate for classification."""
    return "rmse" if task == "regression" else "error"


def strategy_names(task: str = "regression") -> list[str]:
    return strategies.names(task)


def schedule(settings: SimSettings, n_pool: int) -> list[int]:
    """Label counts at which the metric is recorded: initial, +batch, …, budget (capped by the pool)."""
    end = min(settings.budget, n_pool)
    return [*range(settings.initial, end, settings.batch), end]


def initial_rows(settings: SimSettings, rep: int, n_pool: int) -> np.ndarray:
    """The random initial labels of a repetition: the same for every strategy."""
    return (
        np.random.default_rng([settings.seed, rep])
        .choice(n_pool, size=settings.initial, replace=False)
        .astype(np.int64)
    )


def round_seed(settings: SimSettings, rep: int, round_: int) -> int:
    """The seed of one round's random choices (candidate sample, draws): every strategy of a repetition gets
    the same one in the same round, as live runs with the same seed would."""
    return int(np.random.SeedSequence([settings.seed, rep, round_]).generate_state(1)[0])


# --- learners -----------------------------------------------------------------------------------


def config_for(data: SimData, settings: SimSettings) -> RunConfig:
    """The RunConfig ``alloop init`` would write for this pool and these options (what a run trains and scores with)."""
    spec = fitting.model_spec(**settings.model)
    s = settings.s if settings.s is not None else default_s(settings.task, spec.kind)
    pool = PoolSpec(
        data.pool or "", data.pool or "", data.id_col, tuple(data.features), "", len(data.y_pool)
    )
    classes = tuple(sim_sgdf.classes_of(data)) if settings.task == "classification" else None
    mean, std = (
        poolio.feature_moments(data.open_pool())
        if data.pool
        else (data.x_pool.mean(axis=0), data.x_pool.std(axis=0))
    )
    return RunConfig(
        pool,
        {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        spec,
        settings.task,
        ("target",),
        s=s,
        train={**sgdf.TrainConfig().to_dict(), "seed": settings.seed},
        classes=classes,
    )


def make_learner(data: SimData, settings: SimSettings):
    """Closed-form ridge for linear/poly regression (what SGDF converges to), SGDF through the core otherwise."""
    config = config_for(data, settings)
    if settings.task == "regression" and config.model.kind == "auto":
        return sim_auto.AutoLearner(data, settings, config)
    if settings.task == "regression" and config.model.kind in ("linear", "poly"):
        return ridge.RidgeLearner(data, settings, config)
    return sim_sgdf.SGDFLearner(data, settings, config.with_s(config.s))


# --- one curve ----------------------------------------------------------------------------------


def round_of(
    learner, state, labeled: np.ndarray, seed: int, uniform: np.ndarray | None = None
) -> strategies.Round:
    """The round as a strategy sees it, from the learner's fit: what ``alloop query`` builds from a run.
    ``uniform``: which labeled rows were uniform draws (the initial labels, a mixed batch's share)."""
    return round_with(
        learner.data, learner.config, labeled, seed, learner.model(state, seed), uniform
    )


def round_with(
    data: SimData,
    config: RunConfig,
    labeled: np.ndarray,
    seed: int,
    model: strategies.TrainedModel | None,
    uniform: np.ndarray | None = None,
) -> strategies.Round:
    """A Round over the simulation's pool with a given model (the standardizer is the config's, as in a run)."""
    return strategies.Round(
        config.task,
        fitting.standardizer(config),
        data.x_pool[labeled].astype(np.float32),
        data.y_pool[labeled][:, None],
        seed,
        model,
        labeled_uniform=uniform,
    )


def run_curve(
    learner,
    settings: SimSettings,
    strategy: str,
    rep: int,
    on_round: Callable[[], None] | None = None,
) -> list[dict]:
    """One learning curve: the test metric after every batch, from the repetition's initial labels.

    Every batch is chosen by ``strategies.select`` over the pool file, the call ``alloop query`` makes.
    Each round also records the stopping signals a run's training records (``commands/stopset.py``):
    the change (regression) or kappa (classification) of the predictions on a fixed stop set against the
    last round's, the CV loss of an s search, and the mean SLD on the stop set.
    """
    data = learner.data
    strat = strategies.get(strategy)
    n_pool = len(data.y_pool)
    info = data.open_pool()
    labeled = initial_rows(settings, rep, n_pool)
    probs = 1.0 / (n_pool - np.arange(len(labeled)))  # the initial draw was uniform
    uniform = np.ones(len(labeled), bool)
    x_stop = data.x_pool[stop_rows(settings, n_pool)]
    rows, state, prev = [], None, None
    for r, target in enumerate(schedule(settings, n_pool)):
        t0 = time.perf_counter()
        if state is not None:
            rnd = round_of(learner, state, labeled, round_seed(settings, rep, r), uniform)
            sel = strategies.select(strat, info, rnd, data.ids[labeled], target - len(labeled))
            picked = data.rows_of(sel.ids)
            labeled = np.concatenate([labeled, picked])
            probs = np.concatenate([probs, sel.prob])
            uniform = np.concatenate(
                [uniform, sel.uniform if sel.uniform is not None else np.zeros(len(picked), bool)]
            )
        w = research.lure_weights(probs, n_pool) if strat.weighted else None
        state = learner.fit(labeled, w)
        metric = learner.test_metric(state)
        sig, prev = stop_signal(learner, state, x_stop, prev, round_seed(settings, rep, r))
        rows.append(
            {
                "strategy": strategy,
                "rep": rep,
                "n_labels": len(labeled),
                "metric": metric,
                "seconds": time.perf_counter() - t0,
                **sig,
            }
        )
        if on_round is not None:
            on_round()
    return rows


def stop_rows(settings: SimSettings, n_pool: int) -> np.ndarray:
    """The stop set: the rows a run with this seed draws (``stopping.stop_rows``), the same for every strategy and repetition."""
    return stopping.stop_rows(settings.seed, n_pool)


def stop_signal(learner, state, x_stop: np.ndarray, prev, seed: int) -> tuple[dict, np.ndarray]:
    """({change, kappa, cv_loss, mean_sld}, this round's stop-set predictions) for a fitted learner."""
    model, task = learner.model(state, seed), learner.config.task
    pred = stopping.stop_predictions(
        fitting.predict(learner.config, model.params, x_stop.astype(np.float32), model.target),
        len(x_stop),
        task,
    )
    change, kappa = (
        stopping.compare(prev, pred, task, len(x_stop)) if prev is not None else (None, None)
    )
    sld = model.on_rows(model.sld(), x_stop)
    mean_sld = float(np.mean(sld)) if len(sld) and np.all(np.isfinite(sld)) else None
    return {
        "change": change,
        "kappa": kappa,
        "cv_loss": getattr(learner, "cv_loss", None),
        "mean_sld": mean_sld,
    }, pred


# --- curves.csv ---------------------------------------------------------------------------------


def read_curves(path: Path, expected_n: list[int]) -> dict[tuple[str, int], list[dict]]:
    """Complete curves in ``path`` by (strategy, rep). Incomplete or malformed rows are dropped and the
    file is rewritten without them (a simulation killed mid-write leaves at most a partial line)."""
    if not path.exists():
        return {}
    text = path.read_text()
    groups: dict[tuple[str, int], list[dict]] = {}
    lines = text.splitlines(keepends=True)
    for line in lines[1:]:
        row = _parse_row(line)
        if row is not None:
            groups.setdefault((row["strategy"], row["rep"]), []).append(row)
    done = {
        key: rows for key, rows in groups.items() if [r["n_labels"] for r in rows] == expected_n
    }
    if (
        not lines
        or lines[0].strip() != ",".join(CURVE_COLUMNS + SIGNAL_COLUMNS)
        or sum(map(len, done.values())) != len(lines) - 1
    ):
        atomic.write_text_atomic(
            path, _encode_rows([r for rows in done.values() for r in rows], header=True)
        )
    return done


def _parse_row(line: str) -> dict | None:
    if not line.endswith("\n"):
        return None
    cells = next(csv.reader([line]), [])
    if len(cells) not in (
        len(CURVE_COLUMNS),
        len(CURVE_COLUMNS) + len(SIGNAL_COLUMNS),
    ):  # curves written before the signals lack them
        return None
    try:
        row = {
            "strategy": cells[0],
            "rep": int(cells[1]),
            "n_labels": int(cells[2]),
            "metric": float(cells[3]),
            "seconds": float(cells[4]),
        }
        for k, v in zip(SIGNAL_COLUMNS, cells[len(CURVE_COLUMNS) :]):
            row[k] = float(v) if v else None
        return row
    except ValueError:
        return None


def _encode_rows(rows: list[dict], header: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CURVE_COLUMNS + SIGNAL_COLUMNS)
    for r in rows:
        signals = ["" if r.get(k) is None else repr(float(r[k])) for k in SIGNAL_COLUMNS]
        w.writerow(
            [
                r["strategy"],
                r["rep"],
                r["n_labels"],
                repr(float(r["metric"])),
                f"{r['seconds']:.4f}",
                *signals,
            ]
        )
    return buf.getvalue()


def append_curve(path: Path, rows: list[dict]) -> None:
    """Append one finished curve in a single write, then fsync."""
    if not path.exists():
        atomic.write_text_atomic(path, _encode_rows([], header=True))
    with open(path, "a", encoding="utf-8") as f:
        f.write(_encode_rows(rows))
        f.flush()
        os.fsync(f.fileno())


def check_config(out: Path, config: dict) -> None:
    """Refuse to mix curves of different settings or data in one directory."""
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            raise UserError(
                f"{out} holds a simulation with other settings ({', '.join(diff)} differ): "
                "pass another --out, or delete that directory to start over"
            )
    else:
        atomic.write_json_atomic(path, config)


# --- the whole simulation -----------------------------------------------------------------------


def simulate(
    data: SimData,
    settings: SimSettings,
    strategy_list: list[str],
    reps: int,
    out: Path,
    jobs: int | None = None,
    reporter: Reporter | None = None,
    stop: dict | None = None,
) -> dict:
    """Run every missing (strategy, rep) curve, then write the summary and the plot; returns the summary.

    ``stop`` overrides stopping thresholds (``training.stopping.StopRules``) for the stop report only: the
    curves record the signals, so other thresholds are replayed without running anything again.
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
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(out, wait=0.0))
        except UserError:
            raise UserError(
                f"{out} is in use by another alloop simulate: wait for it to finish, or pass another --out"
            ) from None
        return _simulate_locked(data, settings, strategy_list, reps, out, jobs, reporter, rules)


def _simulate_locked(
    data,
    settings,
    strategy_list,
    reps,
    out: Path,
    jobs,
    reporter: Reporter,
    rules: stopping.StopRules,
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
    jobs = max(1, min(jobs or default_jobs(), len(todo) or 1))
    t0 = time.perf_counter()
    with reporter.progress(
        f"simulating {len(todo)} curves on {data.name}", len(todo) * len(expected)
    ) as advance:
        for rows in _run_all(data, settings, todo, jobs, advance):
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
    **settings,
) -> dict:
    """The ``simulate`` use case: find the data (``dataset`` or ``pool`` + ``test``), then ``simulate``.

    A bundled dataset's ``demo`` defaults (model, s) and task apply unless given. Without them, model and s
    follow ``alloop init``'s policy (``config.default_model``, ``config.default_s``): auto model and s for
    regression, a linear model with s = 1 for classification.
    """
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
                "simulate needs --dataset NAME, or --pool FILE and --test FILE (both with the target column)"
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
    )
    return {**summary, "out": str(where), "markdown": (where / "summary.md").read_text()}


def pool_name(pool: str) -> str:
    """A name for the simulation's default folder: the pool file's stem, or its folder's name when the file is pool.parquet."""
    text = str(pool).partition("?")[0].rstrip("/")
    if poolio.is_uri(text):
        parts = [p for p in text.split("://", 1)[1].split("/") if p]
        stem = Path(parts[-1]).stem if parts else "pool"
        return stem if stem != "pool" or len(parts) < 2 else parts[-2]
    return Path(text).stem if Path(text).stem != "pool" else Path(text).resolve().parent.name


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _run_all(data, settings, todo, jobs, advance):
    """Yield finished curves; in this process when jobs == 1, else in spawned worker processes."""
    if jobs == 1:
        learner = make_learner(data, settings)
        for strategy, rep in todo:
            yield _quiet_blas(run_curve, learner, settings, strategy, rep, lambda: advance(1))
        return
    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue()
    quiet = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # then Ctrl-C is not ours to act on
    with cf.ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker, initargs=(data, settings, ticks, quiet)
    ) as ex:
        pending = {ex.submit(_worker_curve, s, r) for s, r in todo}
        try:
            while pending:
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(ticks, advance)
                for fut in finished:
                    yield fut.result()
            _drain(ticks, advance)
        except cf.process.BrokenProcessPool:
            ex.shutdown(wait=False, cancel_futures=True)
            raise UserError(
                "a worker process ended abruptly (killed, out of memory, or interrupted): "
                "the finished curves are kept; run the same command again to resume"
            ) from None
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _drain(ticks, advance) -> None:
    while True:
        try:
            ticks.get_nowait()
        except queue_mod.Empty:
            return
        advance(1)


_WORKER: dict = {}


def _init_worker(data: SimData, settings: SimSettings, ticks, quiet: bool) -> None:
    # Ctrl-C reaches the workers too: end them without a traceback, the parent reports the interruption.
    signal.signal(signal.SIGINT, signal.SIG_IGN if quiet else (lambda *_: os._exit(130)))
    _WORKER.update(learner=make_learner(data, settings), settings=settings, ticks=ticks)


def _worker_curve(strategy: str, rep: int) -> list[dict]:
    w = _WORKER
    return _quiet_blas(
        run_curve, w["learner"], w["settings"], strategy, rep, lambda: w["ticks"].put(1)
    )


def _quiet_blas(fn, *args):
    """Run with one BLAS thread: parallelism comes from worker processes, and results do not depend on it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return fn(*args)
    with threadpool_limits(limits=1):
        return fn(*args)
