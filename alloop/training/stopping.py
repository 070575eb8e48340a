"""When to stop labeling: stopping rules over the rounds of an active-learning run (numpy only).

A run's history is a list of rounds, oldest first, each a dict (a ``Round`` record):

- ``labels``: the number of labels the round's model was trained on;
- ``predictions``: the model's predictions on the fixed stop set (regression: (n,) or (n, targets)
  floats; classification: (n,) predicted classes), or None;
- ``cv_loss``: the cross-validated loss (mean per row) that ``--s auto`` computed, or None;
- ``mean_sld``: the mean SLD of the model over the stop set, or None;
- optionally ``change`` / ``kappa``: the comparison with the previous round, already computed (what
  ``alloop status`` reads from the history, where the predictions are not kept); computed from
  ``predictions`` when absent.

The rules (thresholds in ``StopRules``; each says stop at the first round where it holds):

- ``stable_predictions`` (regression): the relative change of the stop-set predictions between
  successive rounds, rms(new − old) / std(old), stays below ``change_threshold`` for
  ``change_rounds`` comparisons in a row (the regression analogue of Bloodgood & Vijay-Shanker
  2009).
- ``kappa`` (classification): the mean Cohen's kappa of successive models' predicted classes on the
  stop set over the last ``kappa_window`` comparisons reaches ``kappa_threshold`` (Bloodgood &
  Vijay-Shanker 2009 used window 3, threshold 0.99; window 1 saved more labels within the tolerance
  here).
- ``cv_plateau``: the CV loss improved by at most ``cv_tolerance`` (relative) over the last
  ``cv_window`` rounds.
- ``sld_fall``: the mean SLD on the stop set, the tangent's measure of how much a label can still
  change the model, fell to ``sld_fraction`` of its largest value so far.

The decision (``decide``) is the task's primary rule, ``stable_predictions`` for regression and
``kappa`` for classification; the others are reported beside it as evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

RULES = ("stable_predictions", "kappa", "cv_plateau", "sld_fall")
SIGNALS = (
    "change",
    "kappa",
    "cv_loss",
    "mean_sld",
)  # what a round records for the rules (besides its label count)
PRIMARY = {"regression": "stable_predictions", "classification": "kappa"}


@dataclass(frozen=True)
class StopRules:
    """Thresholds of the rules. The deciding rules' defaults are the values
    ``benchmarks/stopping.py`` chose on the bundled datasets (most labels saved with ≤ 2% test error
    given up, ≤ 0.5 points for classification, docs/results.md); for ``cv_plateau`` and ``sld_fall``
    no value tried met that tolerance, so they are evidence, not the decision."""

    change_threshold: float = 0.05
    change_rounds: int = 3
    kappa_threshold: float = 0.99
    kappa_window: int = 1
    cv_tolerance: float = 0.01
    cv_window: int = 3
    sld_fraction: float = 0.05

    @classmethod
    def from_dict(cls, d: dict | None) -> StopRules:
        """Defaults overridden by the keys of ``d`` (unknown keys are an error)."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown stopping thresholds {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def prediction_change(old, new) -> float:
    """rms(new − old) / std(old) over the stop set (per target, the largest); 0 for identical
    predictions."""
    old = np.asarray(old, np.float64).reshape(len(old), -1)
    new = np.asarray(new, np.float64).reshape(len(new), -1)
    if old.shape != new.shape or len(old) == 0:
        raise ValueError(f"predictions of different shapes {old.shape} and {new.shape}")
    rms = np.sqrt(np.mean((new - old) ** 2, axis=0))
    scale = np.std(old, axis=0)
    scale = np.where(scale > 0, scale, np.maximum(np.sqrt(np.mean(old**2, axis=0)), 1e-12))
    return float(np.max(rms / scale))


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two labelings of the same rows: 1 for identical ones, 0 for agreement by
    chance."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"labelings of different lengths {a.shape} and {b.shape}")
    p_o = float(np.mean(a == b))
    classes = np.union1d(a, b)
    p_e = float(sum(np.mean(a == c) * np.mean(b == c) for c in classes))
    if p_e >= 1.0:  # both constant and equal
        return 1.0 if p_o == 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)


STOP_SET_ROWS = 1000


def stop_rows(seed: int, n_pool: int) -> np.ndarray:
    """The stop set's rows: a fixed uniform sample of the pool (sorted indices), drawn from the
    run's seed alone."""
    rng = np.random.default_rng([int(seed), 0x5709])
    return np.sort(rng.choice(n_pool, size=min(STOP_SET_ROWS, n_pool), replace=False))


def stop_predictions(outputs, rows: int, task: str) -> np.ndarray:
    """A model's raw outputs on the stop set as the rules compare them: (rows,) classes, or (rows,
    outputs) values."""
    out = np.asarray(outputs, np.float64).reshape(rows, -1)
    return np.argmax(out, axis=1) if task == "classification" else out


def compare(old, new, task: str, rows: int) -> tuple[float | None, float | None]:
    """(change, kappa) of successive stop-set predictions (flat or shaped): the change for
    regression, kappa for classification."""
    if task == "classification":
        return None, cohen_kappa(old, new)
    return prediction_change(np.reshape(old, (rows, -1)), np.reshape(new, (rows, -1))), None


def signals(history: list[dict], task: str) -> list[dict]:
    """Per round: labels, change and kappa against the previous round (None for the first), cv_loss,
    mean_sld."""
    out, prev = [], None
    for r in history:
        change, kappa = r.get("change"), r.get("kappa")
        pred = r.get("predictions")
        if pred is not None and prev is not None:
            if task == "classification":
                kappa = cohen_kappa(prev, pred) if kappa is None else kappa
            elif change is None:
                change = prediction_change(prev, pred)
        out.append(
            {
                "labels": r.get("labels"),
                "change": change,
                "kappa": kappa,
                "cv_loss": r.get("cv_loss"),
                "mean_sld": r.get("mean_sld"),
            }
        )
        prev = pred if pred is not None else prev
    return out


def rounds_from_history(records: list[dict]) -> list[dict]:
    """The rounds of a run's history.jsonl: the ``stop`` signals of its trainings, the last one per
    label count."""
    by_labels: dict = {}
    for r in records:
        if r.get("command") == "train" and isinstance(r.get("stop"), dict):
            by_labels.pop(r["stop"].get("labels"), None)
            by_labels[r["stop"].get("labels")] = r["stop"]
    return list(by_labels.values())


def _finite(v) -> bool:
    return v is not None and np.isfinite(v)


def _stable_predictions(sig: list[dict], rules: StopRules) -> int | None:
    run = 0
    for i, s in enumerate(sig):
        run = run + 1 if _finite(s["change"]) and s["change"] < rules.change_threshold else 0
        if run >= rules.change_rounds:
            return i
    return None


def _kappa(sig: list[dict], rules: StopRules) -> int | None:
    w = rules.kappa_window
    for i in range(len(sig)):
        window = [s["kappa"] for s in sig[max(0, i - w + 1) : i + 1]]
        if (
            len(window) == w
            and all(_finite(k) for k in window)
            and np.mean(window) >= rules.kappa_threshold
        ):
            return i
    return None


def _cv_plateau(sig: list[dict], rules: StopRules) -> int | None:
    w = rules.cv_window
    for i in range(w, len(sig)):
        old, new = sig[i - w]["cv_loss"], sig[i]["cv_loss"]
        if _finite(old) and _finite(new) and old - new <= rules.cv_tolerance * abs(old):
            return i
    return None


def _sld_fall(sig: list[dict], rules: StopRules) -> int | None:
    peak = None
    for i, s in enumerate(sig):
        v = s["mean_sld"]
        if not _finite(v):
            continue
        peak = v if peak is None else max(peak, v)
        if i > 0 and peak > 0 and v <= rules.sld_fraction * peak:
            return i
    return None


_RULE_FNS = {
    "stable_predictions": _stable_predictions,
    "kappa": _kappa,
    "cv_plateau": _cv_plateau,
    "sld_fall": _sld_fall,
}


def rules_for(task: str) -> tuple[str, ...]:
    return (
        ("kappa", "sld_fall")
        if task == "classification"
        else ("stable_predictions", "cv_plateau", "sld_fall")
    )


def stop_rounds(
    history: list[dict], task: str = "regression", rules: StopRules | None = None
) -> dict[str, int | None]:
    """For each rule of the task: the index (into ``history``) of the first round at which it says
    stop, or None."""
    rules = rules or StopRules()
    sig = signals(history, task)
    return {name: _RULE_FNS[name](sig, rules) for name in rules_for(task)}


def decide(history: list[dict], task: str = "regression", rules: StopRules | None = None) -> dict:
    """Whether to stop now, and why: {"stop", "rule", "reasons", "rules": {name: {"stop", "round",
    "labels", "why"}}, "thresholds"}."""
    rules = rules or StopRules()
    sig = signals(history, task)
    at = {name: _RULE_FNS[name](sig, rules) for name in rules_for(task)}
    last = sig[-1] if sig else {}
    report = {}
    for name, idx in at.items():
        report[name] = {
            "stop": idx is not None,
            "round": idx,
            "labels": None if idx is None else sig[idx]["labels"],
            "why": _why(name, sig, rules),
        }
    primary = PRIMARY.get(task, "stable_predictions")
    stop = report[primary]["stop"]
    reasons = [f"{n}: {r['why']}" for n, r in report.items()]
    return {
        "stop": stop,
        "rule": primary,
        "reasons": reasons,
        "rules": report,
        "rounds": len(sig),
        "latest": last,
        "thresholds": rules.to_dict(),
    }


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _why(name: str, sig: list[dict], rules: StopRules) -> str:
    if not sig:
        return "no trained model yet"
    if name == "stable_predictions":
        recent = [s["change"] for s in sig[-rules.change_rounds :]]
        return (
            f"relative change of the stop-set predictions over the last {len(recent)} rounds "
            f"{', '.join(_fmt(c) for c in recent)} (stop below {rules.change_threshold:g} for "
            f"{rules.change_rounds} rounds)"
        )
    if name == "kappa":
        recent = [s["kappa"] for s in sig[-rules.kappa_window :]]
        return (
            f"kappa of successive models on the stop set {', '.join(_fmt(k) for k in recent)} "
            f"(stop when the mean of the last {rules.kappa_window} reaches "
            f"{rules.kappa_threshold:g})"
        )
    if name == "cv_plateau":
        cv = [s["cv_loss"] for s in sig]
        if not any(_finite(c) for c in cv):
            return "no CV loss recorded (it is computed with --s auto or loocv)"
        if len(cv) > rules.cv_window:
            seen = (
                f"CV loss {_fmt(cv[-1])}, {rules.cv_window} rounds before "
                f"{_fmt(cv[-1 - rules.cv_window])}"
            )
        else:
            seen = f"CV loss {_fmt(cv[-1])}, fewer than {rules.cv_window + 1} rounds"
        return seen + (
            f" (stop when it improves by at most {rules.cv_tolerance:.0%} over "
            f"{rules.cv_window} rounds)"
        )
    vals = [s["mean_sld"] for s in sig if _finite(s["mean_sld"])]
    if not vals:
        return "no SLD recorded"
    return (
        f"mean SLD on the stop set {_fmt(vals[-1])}, {vals[-1] / max(vals):.3g} of its peak "
        f"{_fmt(max(vals))} (stop at {rules.sld_fraction:g} of the peak)"
    )
