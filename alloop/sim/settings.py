"""What defines a simulated curve (``SimSettings``), its checks, and the randomness a curve draws
from the seed alone: initial labels from (seed, rep), each round's choices from (seed, rep,
round)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from alloop import strategies
from alloop.config import MODEL_KINDS, PoolSpec, RunConfig, default_s
from alloop.core import sgdf
from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.sim.data import SimData
from alloop.training import classmap, stopping
from alloop.training import fit as fitting

DEFAULT_STRATEGIES = {
    "regression": ("herding", "sld", "sld-topk", "random", "greedy", "igs", "committee", "emcm"),
    "classification": ("margin", "sld", "herding", "entropy", "random", "greedy"),
}
DEFAULT_REPS = 20  # 5 repetitions cannot separate the 1–3% differences measured in docs/results.md


@dataclass(frozen=True)
class SimSettings:
    """What defines a curve; stored in DIR/config.json and checked on resume."""

    initial: int = 10
    budget: int = 200
    batch: int = 10
    seed: int = 0
    model: dict = field(default_factory=lambda: {"kind": "linear"})
    # a number, or "auto"/"loocv" (linear/poly regression): chosen every round as `alloop train`
    # does
    s: float | str = 1.0
    task: str = "regression"
    group_col: str | None = None  # simulate --group-col: the grouped linear model (sim/grouped.py)

    def to_dict(self) -> dict:
        """As stored in config.json; without group_col unless set (older simulations resume)."""
        out = asdict(self)
        if out["group_col"] is None:
            del out["group_col"]
        return out


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
                "--s must be a positive number, or auto/loocv with a linear or poly regression "
                "model (an MLP or classifier takes a number: choosing s by SGDF cross-validation "
                "every round is too slow to simulate)"
            )
    elif not (np.isfinite(settings.s) and settings.s > 0):
        raise UserError(f"--s must be a positive number, got {settings.s}")
    if kind == "auto" and (settings.task != "regression" or not isinstance(settings.s, str)):
        raise UserError(
            "--model auto chooses among linear, polynomial and MLP models by the cross-validated "
            "loss of --s auto: use it for regression with --s auto (or loocv: linear and "
            "polynomial only)"
        )
    if settings.group_col is not None and (settings.task != "regression" or kind == "mlp"):
        raise UserError(
            "--group-col simulates the grouped linear model: regression, --model linear (or auto)"
        )
    if settings.group_col is not None and kind == "poly":
        raise UserError("--group-col simulates the grouped linear model: pass --model linear")
    unknown = [
        s for s in strategies_ if s not in strategies.REGISTRY and s not in strategies.ALIASES
    ]
    if unknown:
        raise UserError(
            f"unknown strategy {unknown[0]!r}: choose from "
            f"{', '.join(strategy_names(settings.task))}"
        )
    other = [s for s in strategies_ if settings.task not in strategies.get(s).tasks]
    if other:
        raise UserError(
            f"strategy {other[0]!r} does not apply to {settings.task}: choose from "
            f"{', '.join(strategy_names(settings.task))}"
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
    """Label counts at which the metric is recorded: initial, +batch, …, budget (capped by the
    pool)."""
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
    """The seed of one round's random choices (candidate sample, draws): every strategy of a
    repetition gets the same one in the same round, as live runs with the same seed would."""
    return int(np.random.SeedSequence([settings.seed, rep, round_]).generate_state(1)[0])


def stop_rows(settings: SimSettings, n_pool: int) -> np.ndarray:
    """The stop set: the rows a run with this seed draws (``stopping.stop_rows``), the same for
    every strategy and repetition."""
    return stopping.stop_rows(settings.seed, n_pool)


def config_for(data: SimData, settings: SimSettings) -> RunConfig:
    """The RunConfig ``alloop init`` would write for this pool and these options (what a run trains
    and scores with)."""
    spec = fitting.model_spec(**settings.model)
    s = settings.s if settings.s is not None else default_s(settings.task, spec.kind)
    pool = PoolSpec(
        data.pool or "", data.pool or "", data.id_col, tuple(data.features), "", len(data.y_pool)
    )
    classes = tuple(classes_of(data)) if settings.task == "classification" else None
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


def classes_of(data: SimData) -> list[str]:
    """Every class of the pool and test labels, in the order ``init`` sorts them."""
    return classmap.initial_classes(["target"], data.y_pool, data.y_test)
