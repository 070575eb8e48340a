"""``--model auto``: choose the model class of a regression run from its own labels, every training.

No model class wins on every table (docs/results.md): ridge on the raw inputs is hard to beat where
the target is near-linear and few labels are in, a polynomial or a network wins where it is not. The
candidates (``config.AUTO_CANDIDATES``) are linear, poly 2, poly 3 and an MLP (64, 64, tanh). Each
is scored by the k-fold cross-validated loss of ``--s auto`` on the same folds and the same
standardized targets: the linear ones at their own best s (exact folds), the MLP at the best s of a
fixed grid (``choose_s.choose_grid``). The MLP joins from MLP_MIN_LABELS labels, where the folds are
k-fold for every candidate (LOOCV below ``loo_below`` would favour the models trained on more rows)
and where it can first compete. The simplest candidate within one standard error of the lowest loss
wins (the per-label held-out losses are paired across candidates: same folds, same labels), so a few
labels that one model fits better do not decide alone. The model in use stays on a hysteresis either
side of that choice. More flexible than it, the model in use stays while its CV loss is below the
choice's by more than SWITCH_MARGIN (``leads``): a flexible model adopted on a lead beyond one
standard error is not dropped the round its lead dips inside it, so the choice does not flap between
two models on noise (docs/results.md: poly 3 and the MLP in turn every round on elec_demand, the
test error jumping 45% each time), and one that a few large labels brought in leaves once it no
longer leads (keeping it while within one standard error of the lowest held an MLP on doctor_visits
for 80 labels, since the error there is as large as the losses). Simpler than the choice, it stays
while within SWITCH_MARGIN of the lowest (``keeps``).

Cross-validation sees only the labeled rows. A polynomial fitted to 20 or 30 of them can
cross-validate best and still run wild on the pool rows between and beyond them (docs/results.md: on
the suite's tables, choosing by CV alone made the test RMSE at 20 labels 1.10 times the linear
model's on average, up to 1.59). So, given a uniform sample of the pool, a candidate more flexible
than the linear model is eligible only if its predictions there vary no more than y may (E[y|x]
never varies more than y; Var y at its 95% upper confidence limit from the labels) plus its own CV
loss, or no more than the linear model's predictions do (``ineligible``, ``choose_s.pool_spread``).
No files here: the caller passes arrays and stores the choice.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alloop.config import AUTO_CANDIDATES, ModelSpec, RunConfig, as_config
from alloop.training import choose_s
from alloop.training import fit as fitting

# a more flexible model in use stays while it leads the one-SE choice by this; a simpler one while
# within it of the lowest
SWITCH_MARGIN = 0.02
MLP_MIN_LABELS = 40  # the MLP is a candidate from this many labels (with --s auto)
SPREAD_CONFIDENCE_Z = (
    -1.6448536
)  # the 5% normal quantile: Var y's one-sided 95% upper confidence limit (``variance_limit``)


class ModelChoice(NamedTuple):
    model: ModelSpec  # the chosen model (without the auto mark)
    s: float
    s_choice: choose_s.Choice
    cv_loss: dict  # label -> CV loss at that candidate's chosen s
    previous: str | None  # the model in use before (None at the first training)
    reason: str
    # label -> its predictions' variance on the pool sample over the labels' (None: no sample)
    spread: dict | None = None
    grid_state: choose_s.GridWarm | None = (
        None  # the MLP's grid trainings: the next choice's warm start
    )

    @property
    def switched(self) -> bool:
        return self.previous is not None and self.previous != self.model.label()

    def record(self) -> dict:
        """What the checkpoint's meta and the history keep (status shows it)."""
        return {
            "model": self.model.label(),
            "cv_loss": self.cv_loss,
            "previous": self.previous,
            "switched": self.switched,
            "reason": self.reason,
            **({} if self.spread is None else {"spread": self.spread}),
        }


def candidates(n: int | None = None, config: RunConfig | None = None) -> list[ModelSpec]:
    """The models auto chooses among; with ``n`` labels and the run's ``config``, those eligible
    now."""
    every = [fitting.model_spec(**c) for c in AUTO_CANDIDATES]
    if n is None:
        return every
    return [spec for spec in every if spec.kind != "mlp" or mlp_eligible(n, config)]


def mlp_eligible(n: int, config: RunConfig) -> bool:
    """The MLP competes from MLP_MIN_LABELS labels, when s is chosen by k-fold CV (``--s auto``)."""
    config = as_config(config)
    tc = choose_s.tune_config(config)
    return config.s == "auto" and n >= MLP_MIN_LABELS and choose_s.n_folds(n, tc) < n


def choose(
    config: RunConfig,
    x,
    y,
    *,
    current: ModelSpec | None = None,
    s_prev: float | None = None,
    margin: float = SWITCH_MARGIN,
    x_pool=None,
    warm: choose_s.GridWarm | None = None,
) -> ModelChoice:
    """The simplest eligible candidate within one standard error of the lowest CV loss
    (``simplest_within_se``); ``current``, while eligible, is kept if more flexible than that and
    leading it by more than ``margin`` (``leads``), or if simpler and within one standard error or
    ``margin`` of the lowest (``keeps``).

    ``x_pool``: a uniform sample of the pool's rows (the run's stop set); without it every candidate
    is eligible. ``warm``: the last choice's ``grid_state``, where the MLP's grid search starts
    (``choose_s.choose_grid``)."""
    config = as_config(config)
    now = None if current is None else current.concrete().label()
    scored = []
    for spec in candidates(len(x), config):
        value, choice = choose_s.resolve_s(
            config.replace(model=spec),
            x,
            y,
            s_prev=s_prev if spec.label() == now else None,
            x_pool=x_pool,
            warm=warm,
        )
        scored.append((spec, value, choice))
    grid_state = next((c.grid_state for _, _, c in scored if c.grid_state is not None), None)
    losses = {spec.label(): float(choice.cv_loss) for spec, _, choice in scored}
    spreads = (
        None if x_pool is None else {spec.label(): choice.spread for spec, _, choice in scored}
    )
    out = ineligible(scored, spreads, len(x))
    eligible = [t for t in scored if t[0].label() not in out]
    best, lowest, se = simplest_within_se(eligible)
    kept = next((t for t in eligible if t[0].label() == now), None)
    order = [t[0].label() for t in eligible]  # simplest first
    flexible = kept is not None and order.index(now) > order.index(best[0].label())
    if (
        kept is not None
        and kept is not best
        and (leads(kept, best, margin) if flexible else keeps(kept, lowest, margin))
    ):
        reason = (
            (
                f"kept {now}: its CV loss {kept[2].cv_loss:.4g} is more than {margin:.0%} below "
                f"{best[0].label()}'s {best[2].cv_loss:.4g}, the simplest within one standard "
                f"error ({se:.3g}) of the lowest ({_listed(losses)})"
            )
            if flexible
            else (
                f"kept {now}: its CV loss {kept[2].cv_loss:.4g} is within {margin:.0%} of the "
                f"lowest, {lowest[0].label()}'s {lowest[2].cv_loss:.4g} ({_listed(losses)})"
            )
        )
        best = kept
    else:
        why = (
            f"lowest CV loss{' of the eligible' if out else ''} ({_listed(losses)})"
            if best is lowest
            else (
                f"the simplest within one standard error ({se:.3g}) of the lowest CV loss, "
                f"{lowest[0].label()}'s {lowest[2].cv_loss:.4g} ({_listed(losses)})"
            )
        )
        if kept is best:
            reason = f"kept {now}: {why}"
        elif now is None:
            reason = f"{best[0].label()}: {why}"
        else:
            reason = f"switched from {now} to {best[0].label()}: {why}" + (
                f"; {now} does not lead it by more than {margin:.0%}" if flexible else ""
            )
    if out:
        reason += "; " + ", ".join(
            (
                f"{label} ruled out (its predictions on the pool vary {spreads[label]:.3g}× as "
                "much as the labels)"
            )
            for label in out
        )
    spec, value, choice = best
    return ModelChoice(
        model=spec,
        s=float(value),
        s_choice=choice,
        cv_loss=losses,
        previous=now,
        reason=reason,
        spread=spreads,
        grid_state=grid_state,
    )


def simplest_within_se(scored: list) -> tuple:
    """(chosen, lowest, se): of candidates listed simplest first, the first whose CV loss exceeds
    the lowest one's by at most one standard error of their paired per-label difference (the
    one-standard-error rule).

    Squared-error CV on 50 labels of a heavy-tailed target is a mean dominated by a few rows: a
    flexible model that fits two large counts better has the lowest mean and doubles the test error
    (docs/results.md, doctor_visits). The per-label differences carry that: those rows make their
    standard error large, so the simpler model stays unless the flexible one wins on the labels
    broadly. Candidates without per-label losses compare by the mean alone."""
    finite = lambda t: t[2].cv_loss if np.isfinite(t[2].cv_loss) else np.inf  # noqa: E731
    lowest = min(scored, key=finite)
    for t in scored:
        if t is lowest:
            return lowest, lowest, 0.0
        se = paired_se(t[2].row_loss, lowest[2].row_loss)
        if np.isfinite(t[2].cv_loss) and t[2].cv_loss - lowest[2].cv_loss <= se:
            return t, lowest, se
    return lowest, lowest, 0.0


def leads(current: tuple, choice: tuple, margin: float = SWITCH_MARGIN) -> bool:
    """Whether a model in use, more flexible than the one-standard-error ``choice``, stays: its CV
    loss is below the choice's by more than ``margin``. Its lead, not its distance from the lowest,
    is what keeps it: the flexible model must keep paying for itself on the labels, or the simpler
    one takes over."""
    return bool(
        np.isfinite(current[2].cv_loss) and current[2].cv_loss * (1.0 + margin) < choice[2].cv_loss
    )


def keeps(current: tuple, lowest: tuple, margin: float = SWITCH_MARGIN) -> bool:
    """Whether the model in use stays: its CV loss exceeds the lowest by at most one standard error
    of their paired per-label difference, or by at most ``margin`` of the lowest (the band the
    evidence cannot split)."""
    excess = current[2].cv_loss - lowest[2].cv_loss
    band = max(paired_se(current[2].row_loss, lowest[2].row_loss), margin * lowest[2].cv_loss)
    return bool(np.isfinite(current[2].cv_loss) and excess <= band)


def paired_se(a, b) -> float:
    """The standard error of the mean of a − b over labels (0 when either is missing or has under 2
    rows)."""
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return 0.0
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    se = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    return se if np.isfinite(se) else 0.0


def ineligible(scored, spreads: dict | None, n: int) -> list[str]:
    """Labels of the flexible candidates whose pool predictions vary too much: more than Var y (at
    most ``variance_limit(n)`` times the variance of the n labels) plus the candidate's own CV loss,
    and more than the linear model's predictions. The linear model is always eligible.

    Over the pool, Var f̂ = Var f + E(f̂ − f)²; Var f ≤ Var y, and on rows like the labeled ones
    E(f̂ − f)² is at most the CV loss (which adds the noise; both are in units of the labels'
    variance). A fit above that bound errs more on the pool than its cross-validation says: it
    extrapolates."""
    if not spreads:
        return []
    limit = variance_limit(max(n, 2))
    linear = next((spreads[spec.label()] for spec, _, _ in scored if spec.kind == "linear"), None)
    linear = linear if linear is not None and np.isfinite(linear) else 0.0
    out = []
    for spec, _, choice in scored:
        spread = spreads[spec.label()]
        if spec.kind == "linear" or spread is None:
            continue
        cv = choice.cv_loss if np.isfinite(choice.cv_loss) else 0.0
        if not spread <= max(limit + cv, linear):
            out.append(spec.label())
    return out


def variance_limit(n: int) -> float:
    """The one-sided 95% upper confidence limit of Var y over the variance of n labels: (n −
    1)/χ²₀.₀₅(n − 1), the quantile by Wilson–Hilferty (within 0.5% of the exact one from 10 labels
    on)."""
    k = float(n - 1)
    q = k * (1.0 - 2.0 / (9.0 * k) + SPREAD_CONFIDENCE_Z * np.sqrt(2.0 / (9.0 * k))) ** 3
    return k / q if q > 0 else np.inf


def _listed(losses: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in losses.items())
