"""``--model auto``: choose the model class of a regression run from its own labels, every training.

No model class wins on every table (docs/results.md): ridge on the raw inputs is hard to beat where the
target is near-linear and few labels are in, a polynomial or a network wins where it is not. The
candidates (``config.AUTO_CANDIDATES``) are linear, poly 2, poly 3 and an MLP (64, 64, tanh). Each is
scored by the k-fold cross-validated loss of ``--s auto`` on the same folds and the same standardized
targets: the linear ones at their own best s (exact folds), the MLP at the best s of a fixed grid
(``choose_s.choose_grid``). The MLP joins from MLP_MIN_LABELS labels, where the folds are k-fold for
every candidate (LOOCV below ``loo_below`` would favour the models trained on more rows) and where it
can first compete. The lowest loss wins, with a margin for the model in use: a run switches only
when another candidate's CV loss is lower by more than SWITCH_MARGIN, so the choice does not flap on
noise. No files here: the caller passes arrays and stores the choice.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alloop.config import AUTO_CANDIDATES, ModelSpec, RunConfig, as_config
from alloop.training import choose_s
from alloop.training import fit as fitting

SWITCH_MARGIN = 0.02  # a challenger must lower the CV loss by more than 2% to replace the model in use
MLP_MIN_LABELS = 40  # the MLP is a candidate from this many labels (with --s auto)


class ModelChoice(NamedTuple):
    model: ModelSpec  # the chosen model (without the auto mark)
    s: float
    s_choice: choose_s.Choice
    cv_loss: dict  # label -> CV loss at that candidate's chosen s
    previous: str | None  # the model in use before (None at the first training)
    reason: str

    @property
    def switched(self) -> bool:
        return self.previous is not None and self.previous != self.model.label()

    def record(self) -> dict:
        """What the checkpoint's meta and the history keep (status shows it)."""
        return {"model": self.model.label(), "cv_loss": self.cv_loss, "previous": self.previous, "switched": self.switched, "reason": self.reason}


def candidates(n: int | None = None, config: RunConfig | None = None) -> list[ModelSpec]:
    """The models auto chooses among; with ``n`` labels and the run's ``config``, those eligible now."""
    every = [fitting.model_spec(**c) for c in AUTO_CANDIDATES]
    if n is None:
        return every
    return [spec for spec in every if spec.kind != "mlp" or mlp_eligible(n, config)]


def mlp_eligible(n: int, config: RunConfig) -> bool:
    """The MLP competes from MLP_MIN_LABELS labels, when s is chosen by k-fold CV (``--s auto``)."""
    config = as_config(config)
    tc = choose_s.tune_config(config)
    return config.s == "auto" and n >= MLP_MIN_LABELS and choose_s.n_folds(n, tc) < n


def choose(config: RunConfig, x, y, *, current: ModelSpec | None = None, s_prev: float | None = None,
           margin: float = SWITCH_MARGIN) -> ModelChoice:
    """The candidate with the lowest CV loss (``current`` kept unless beaten by more than ``margin``)."""
    config = as_config(config)
    now = None if current is None else current.concrete().label()
    scored = []
    for spec in candidates(len(x), config):
        value, choice = choose_s.resolve_s(config.replace(model=spec), x, y, s_prev=s_prev if spec.label() == now else None)
        scored.append((spec, value, choice))
    losses = {spec.label(): float(choice.cv_loss) for spec, _, choice in scored}
    best = min(scored, key=lambda t: (t[2].cv_loss if np.isfinite(t[2].cv_loss) else np.inf))
    kept = next((t for t in scored if t[0].label() == now), None)
    if kept is not None and kept is not best and kept[2].cv_loss <= best[2].cv_loss * (1.0 + margin):
        reason = f"kept {now}: {best[0].label()}'s CV loss {best[2].cv_loss:.4g} is not {margin:.0%} below its {kept[2].cv_loss:.4g}"
        best = kept
    elif kept is None or best is kept:
        reason = f"{'kept ' if kept is not None else ''}{best[0].label()}: lowest CV loss ({_listed(losses)})"
    else:
        reason = f"switched from {now} to {best[0].label()}: CV loss {best[2].cv_loss:.4g} against {kept[2].cv_loss:.4g}"
    spec, value, choice = best
    return ModelChoice(spec, float(value), choice, losses, now, reason)


def _listed(losses: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
