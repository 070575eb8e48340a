"""The simulation's learner seam: what a model family must do for a curve to run on it.

A ``Learner`` fits the labeled pool rows (with optional importance weights), scores its fit on the
test set, hands the fit to the strategies as the ``TrainedModel`` a run's checkpoint gives them, and
reports the cross-validation evidence of its last fit (a stopping signal). One implementation per
model family: closed-form ridge (``sim.ridge``), SGDF through the core (``sim.sgdf``), and the
``--model auto`` choice over them (``sim.auto``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from alloop.config import RunConfig
from alloop.core import compile_cache
from alloop.sim.data import SimData
from alloop.sim.settings import SimSettings, config_for
from alloop.strategies import TrainedModel


class Learner(Protocol):
    """A model family as a simulated curve drives it."""

    data: SimData
    settings: SimSettings

    @property
    def config(self) -> RunConfig:
        """The RunConfig of the model in use (what rounds and stop signals are built from)."""
        ...

    @property
    def cv_loss(self) -> float | None:
        """The CV loss of the last fit's s search (None for a fixed s)."""
        ...

    def fit(self, labeled: np.ndarray, weights: np.ndarray | None) -> Any:
        """Fit the pool rows ``labeled`` (importance ``weights``, or None); returns the fit."""
        ...

    def test_metric(self, fitted: Any) -> float:
        """Test RMSE (regression) or error rate (classification) of a fit."""
        ...

    def model(self, fitted: Any, seed: int) -> TrainedModel:
        """The fit as the strategies see it (θ, θ̇, noise, s, committee members)."""
        ...


def make_learner(data: SimData, settings: SimSettings) -> Learner:
    """Closed-form ridge for linear/poly regression (what SGDF converges to), SGDF through the core
    otherwise, the auto choice over them for ``--model auto``; the grouped model (sim/grouped.py)
    with a group column."""
    from alloop.sim import auto, grouped, ridge, sgdf  # the families import this protocol

    compile_cache.enable()  # worker processes too: each compiled program once per machine
    if settings.group_col is not None:  # any --model: auto does not choose among grouped models
        return grouped.GroupedLearner(grouped.with_group_last(data, settings.group_col), settings)
    config = config_for(data, settings)
    if settings.task == "regression" and config.model.kind == "auto":
        return auto.AutoLearner(data, settings, config)
    if settings.task == "regression" and config.model.kind in ("linear", "poly"):
        return ridge.RidgeLearner(data, settings, config)
    return sgdf.SGDFLearner(data, settings, config.with_s(config.s))
