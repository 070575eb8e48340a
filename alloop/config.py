"""The run configuration, typed: what ``init`` was given, as stored in a run's ``config.json``.

``RunConfig.from_json`` reads every config.json alloop has written (keys that older versions did not
write take their defaults) and ``to_json`` writes the same JSON back, so run directories move
between versions. ``validate`` is the one place where options are checked, with the fix in each
message. Plain data only (no JAX): ``status`` and ``verify`` read it without starting JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alloop.errors import UserError

TASKS = ("regression", "classification")
MODEL_KINDS = ("linear", "poly", "mlp", "auto")
# --model auto: the run chooses among AUTO_CANDIDATES by cross-validation (training.choose_model)
AUTO = "auto"
AUTO_CANDIDATES = (
    {"kind": "linear"},
    {"kind": "poly", "degree": 2},
    {"kind": "poly", "degree": 3},
    {"kind": "mlp", "hidden": (64, 64), "activation": "tanh"},
)  # the MLP from choose_model.MLP_MIN_LABELS labels
ACTIVATIONS = (
    "gelu",
    "relu",
    "sigmoid",
    "silu",
    "softplus",
    "tanh",
)  # core.models.ACTIVATIONS (checked by a test)
CURVATURES = ("hessian", "gauss-newton")
TANGENTS = ("sgdf", "cg", "exact")
TRAINERS = ("sgdf", "newton", "lbfgs", "cg")
OPTIMIZERS = ("adam", "sgd")
S_MODES = ("auto", "loocv")
REGULARIZERS = ("l2", "l2-all", "inherited-anchor")
RESERVED = (
    "id",
    "round",
    "time",
    "rank",
    "score",
)  # columns of the labels files beside the targets


@dataclass(frozen=True)
class PoolSpec:
    """Where the pool is and which of its columns the run reads."""

    path: str
    given: str
    id_col: str
    features: tuple[str, ...]
    fingerprint: str
    rows_at_init: int
    targets_in_pool: tuple[str, ...] = ()
    from_run: str | None = (
        None  # the pool's path relative to the run directory (found again when both move)
    )

    @classmethod
    def from_json(cls, d: Mapping) -> PoolSpec:
        path = d.get("path", "")
        return cls(
            path,
            d.get("given", path),
            d.get("id_col", "id"),
            tuple(d["features"]),
            d.get("fingerprint", ""),
            int(d.get("rows_at_init", 0)),
            tuple(d.get("targets_in_pool", ())),
            d.get("from_run"),
        )

    def to_json(self) -> dict:
        out = {
            "path": self.path,
            "given": self.given,
            "id_col": self.id_col,
            "features": list(self.features),
            "targets_in_pool": list(self.targets_in_pool),
            "fingerprint": self.fingerprint,
            "rows_at_init": self.rows_at_init,
        }
        if self.from_run is not None:
            out["from_run"] = self.from_run
        return out


@dataclass(frozen=True)
class ModelSpec:
    """The model family and its shape. ``extra`` keeps keys this version does not know, as
    stored."""

    kind: str = "linear"
    degree: int = 3  # poly
    hidden: tuple[int, ...] = (64, 64)  # mlp
    activation: str = "tanh"  # mlp
    curvature: str = "hessian"
    damping: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    _OWN = ("kind", "degree", "hidden", "activation", "curvature", "damping")

    @classmethod
    def from_json(cls, d: Mapping) -> ModelSpec:
        kind = d.get("kind", "linear")
        return cls(
            kind,
            int(d.get("degree", 3)),
            tuple(int(h) for h in d.get("hidden", (64, 64))),
            d.get("activation", "tanh"),
            d.get("curvature", "hessian"),
            float(d.get("damping", 0.0)),
            {k: v for k, v in d.items() if k not in cls._OWN},
        )

    def to_json(self) -> dict:
        out: dict = {"kind": self.kind}
        if self.kind == "poly":
            out["degree"] = self.degree
        if self.kind == "mlp":
            out.update(hidden=list(self.hidden), activation=self.activation)
        out.update(curvature=self.curvature, damping=self.damping, **dict(self.extra))
        return out

    @property
    def is_auto(self) -> bool:
        """Chosen by the run (``--model auto``): the kind itself before the first training, then the
        chosen model marked ``"auto": true`` (``io.rundir.effective_config`` puts it there from
        state.json)."""
        return self.kind == AUTO or bool(self.extra.get(AUTO))

    def concrete(self) -> ModelSpec:
        """This model without the auto mark (what a run inheriting it trains)."""
        return dataclasses.replace(self, extra={k: v for k, v in self.extra.items() if k != AUTO})

    def auto_marked(self) -> ModelSpec:
        """This model as an auto run's effective config carries it (the inverse of ``concrete``)."""
        return dataclasses.replace(self, extra={**dict(self.extra), AUTO: True})

    def label(self) -> str:
        """ "linear", "poly 2", "mlp 64,64": how status and the history name a model."""
        if self.kind == "poly":
            return f"poly {self.degree}"
        if self.kind == "mlp":
            return "mlp " + ",".join(map(str, self.hidden))
        return self.kind

    def validate(self) -> None:
        """Model options that training would otherwise trip over (with a traceback), refused up
        front."""
        if self.kind not in MODEL_KINDS:
            raise UserError(f"unknown --model {self.kind!r}: choose linear, poly, mlp or auto")
        if self.kind == "poly" and self.degree < 1:
            raise UserError(f"--degree must be at least 1, got {self.degree}")
        if self.kind == "mlp" and any(h < 1 for h in self.hidden):
            raise UserError(
                f"--hidden sizes must be at least 1, got {','.join(map(str, self.hidden))}: "
                "try --hidden 64,64"
            )
        if self.kind == "mlp" and self.activation not in ACTIVATIONS:
            raise UserError(
                f"unknown --activation {self.activation!r}: choose {', '.join(ACTIVATIONS)}"
            )
        if self.curvature not in CURVATURES:
            raise UserError(
                f"unknown --curvature {self.curvature!r}: choose hessian or gauss-newton"
            )


def default_s(task: str, kind: str) -> float | str:
    """The s of a new run unless told (docs/choosing-s.md has the measurements): ``auto`` for linear
    and poly regression, where it beat s = 1 on average; 1 for MLPs, where auto's SGDF
    cross-validation on few labels chose erratic s and raised the test RMSE (1.00-1.24x), and for
    classification, where on separable label sets it runs s to its lower bound."""
    return "auto" if task == "regression" and kind in ("linear", "poly", AUTO) else 1.0


def default_model(task: str, s: float | str | None = None) -> str:
    """The model of a new run unless told (docs/results.md, "`--model auto` on the suite"): ``auto``
    for regression whose s is chosen (the default), where choosing among linear, polynomials and an
    MLP by CV beat bmdal-reg's LCMD on its own network on more tables at 100 and 200 labels than
    ridge did; linear for classification and for a given numeric s, which auto's cross-validation
    cannot use."""
    return AUTO if task == "regression" and (s is None or is_s_mode(s)) else "linear"


def is_s_mode(s) -> bool:
    """True for the s values that are chosen every round (``auto``, ``loocv``) rather than given."""
    return isinstance(s, str) and s in S_MODES


def parse_s(value) -> float | str:
    """``--s``: a positive number, ``auto`` or ``loocv``; anything else is a user error naming the
    fix."""
    if isinstance(value, str) and value.strip().lower() in S_MODES:
        return value.strip().lower()
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"--s must be a positive number, auto or loocv, got {value!r}: try --s auto"
        ) from None
    if not (math.isfinite(s) and s > 0):
        raise UserError(
            f"--s must be a positive number, auto or loocv, got {value!r}: try --s auto"
        )
    return s


@dataclass(frozen=True)
class RunConfig:
    """Everything ``init`` fixed for a run. Stored as config.json; ``classes`` may grow (kept in
    state.json)."""

    pool: PoolSpec
    standardizer: Mapping[str, list]  # {"mean": [...], "std": [...]} of the features over the pool
    model: ModelSpec = ModelSpec()
    task: str = "regression"
    targets: tuple[str, ...] = ("target",)
    id_kind: str = "int"
    s: float | str = 1.0  # a number, or "auto" / "loocv": chosen at every training
    regularizer: str = "l2"
    tangent: str = "sgdf"
    trainer: str = "sgdf"
    train: Mapping[str, Any] = field(
        default_factory=dict
    )  # sgdf.TrainConfig fields and min_steps, as given
    tune: Mapping[str, Any] | None = None  # how s is chosen (choose_s.TuneConfig fields), as given
    classes: tuple[str, ...] | None = None  # classification: the class labels in output order
    test: Mapping[str, Any] | None = None  # the held-out set: given, rows, sha256
    base: Mapping[str, Any] | None = None  # user runs (init --base): the base run and its model
    created: str = ""
    alloop_version: str = ""

    @classmethod
    def from_json(cls, d: Mapping) -> RunConfig:
        """A config.json as any alloop version wrote it."""
        s = d.get("s", 1.0)
        return cls(
            pool=PoolSpec.from_json(d["pool"]),
            standardizer=dict(d["standardizer"]),
            model=ModelSpec.from_json(d.get("model", {})),
            task=d.get("task", "regression"),
            targets=tuple(d.get("targets", ("target",))),
            id_kind=d.get("id_kind", "int"),
            s=s if is_s_mode(s) else float(s),
            regularizer=d.get("regularizer", "l2"),
            tangent=d.get("tangent", "sgdf"),
            trainer=d.get("trainer", "sgdf"),
            train=dict(d.get("train", {})),
            tune=dict(d["tune"]) if d.get("tune") else None,
            classes=tuple(d["classes"]) if d.get("classes") is not None else None,
            test=d.get("test"),
            base=d.get("base"),
            created=d.get("created", ""),
            alloop_version=d.get("alloop_version", ""),
        )

    def to_json(self) -> dict:
        out = {
            "alloop_version": self.alloop_version,
            "created": self.created,
            "task": self.task,
            "id_kind": self.id_kind,
            "targets": list(self.targets),
            "pool": self.pool.to_json(),
            "standardizer": dict(self.standardizer),
            "model": self.model.to_json(),
            "regularizer": self.regularizer,
            "s": self.s,
            "tangent": self.tangent,
            "train": dict(self.train),
            "test": dict(self.test) if self.test else None,
            "trainer": self.trainer,
        }
        for key in ("tune", "base"):
            if getattr(self, key):
                out[key] = dict(getattr(self, key))
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def with_s(self, s: float) -> RunConfig:
        """This config with a numeric s, as training wants it."""
        return dataclasses.replace(self, s=float(s))

    @property
    def n_outputs(self) -> int:
        return len(self.classes or ()) if self.task == "classification" else len(self.targets)

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", 0))

    def validate(self) -> None:
        """Every option check in one place; UserError names the option and the fix."""
        if self.task not in TASKS:
            raise UserError(f"unknown --task {self.task!r}: choose regression or classification")
        if not is_s_mode(self.s) and not (
            isinstance(self.s, (int, float)) and math.isfinite(self.s) and self.s > 0
        ):
            raise UserError(
                f"--s must be a positive number, auto or loocv, got {self.s}: try --s auto"
            )
        if self.s == "loocv" and (self.model.kind == "mlp" or self.task != "regression"):
            raise UserError("--s loocv needs a linear or poly regression model: use --s auto")
        self.model.validate()
        if self.model.is_auto and (self.task != "regression" or not is_s_mode(self.s)):
            raise UserError(
                "--model auto chooses among linear, polynomial and MLP models by the "
                "cross-validated loss that --s auto computes: use it for regression with --s "
                "auto or loocv (or pick --model linear, poly or mlp)"
            )
        if self.tangent not in TANGENTS:
            raise UserError(f"unknown --tangent {self.tangent!r}: choose sgdf, cg or exact")
        if self.trainer not in TRAINERS:
            raise UserError(f"unknown --trainer {self.trainer!r}: choose sgdf, newton, lbfgs or cg")
        if self.regularizer not in REGULARIZERS:
            raise UserError(
                f"unknown regularizer {self.regularizer!r}: choose {', '.join(REGULARIZERS[:2])}"
            )
        validate_train(self.train)
        validate_targets(self.targets, self.pool.id_col)
        if self.tune and "folds" in self.tune and int(self.tune["folds"]) < 2:
            raise UserError("--folds must be at least 2")


def validate_train(train: Mapping) -> None:
    """Training options (``init`` and ``train --epochs``)."""
    for key in ("epochs", "batch_size"):
        if key in train and int(train[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if "min_steps" in train and int(train["min_steps"]) < 0:
        raise UserError("--min-steps must be 0 or more")
    if "lr" in train and not (math.isfinite(train["lr"]) and train["lr"] > 0):
        raise UserError("--lr must be a positive number")
    if train.get("optimizer", "adam") not in OPTIMIZERS:
        raise UserError(f"unknown --optimizer {train.get('optimizer')!r}: choose adam or sgd")


def validate_targets(targets, id_col: str) -> None:
    """Target names must not collide with the columns of the labels and query files."""
    for t in targets:
        if t in RESERVED or t == id_col:
            names = ", ".join(dict.fromkeys([id_col, *RESERVED]))
            raise UserError(
                f"target column {t!r} clashes with a column alloop writes ({names}): rename "
                "it in the pool and labels"
            )
    if len(set(targets)) < len(targets):
        raise UserError(
            f"--target names a column twice ({','.join(targets)}): list each target once"
        )


def as_config(config: RunConfig | Mapping) -> RunConfig:
    """A RunConfig from either itself or its JSON form (a config.json read as a dict)."""
    return config if isinstance(config, RunConfig) else RunConfig.from_json(config)
