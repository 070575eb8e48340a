"""``--model auto`` in simulation: every round chooses the model as ``alloop train`` does, then fits
it.

``training.choose_model.choose`` scores the candidates on the labels (the simplest within one
standard error of the lowest CV loss, a more flexible model in use kept while it leads that by 2%;
flexible ones ruled out when they vary too much on the stop set, the pool sample a run checks them
on); the chosen one is fitted by its own simulation learner: closed-form ridge for linear and poly,
SGDF through the core for the MLP. A switch to the MLP starts its parameters afresh, as a run's
training does after a switch; staying on it warm-starts from its last fit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from alloop.sim import ridge
from alloop.sim import sgdf as sim_sgdf
from alloop.training import choose_model, stopping


class AutoFit(NamedTuple):
    """A round's fit: the chosen candidate's own fit, its s, the labeled rows and the candidate."""

    fit: Any  # the chosen learner's fit (``ridge.RidgeFit`` or ``sgdf.SGDFFit``)
    s: float
    labeled: np.ndarray
    model: str  # the candidate's label, e.g. "poly 2"


class AutoLearner:
    """``data``/``settings``: ``simulate.SimData``/``SimSettings``; ``config``: the auto run's
    RunConfig (s auto)."""

    def __init__(self, data, settings, config):
        self.data, self.settings, self.auto_config = data, settings, config
        self.learners = {}
        for spec in choose_model.candidates():
            steps = (
                {"steps": settings.model["steps"]} if "steps" in settings.model else {}
            )  # the simulation's SGDF step count
            sub_settings = dataclasses.replace(settings, model={**spec.to_json(), **steps})
            sub = config.replace(model=spec.auto_marked())
            self.learners[spec.label()] = (
                sim_sgdf.SGDFLearner(data, sub_settings, sub.with_s(1.0))
                if spec.kind == "mlp"
                else ridge.RidgeLearner(data, sub_settings, sub)
            )
        self.x_check = data.x_pool[stopping.stop_rows(settings.seed, len(data.x_pool))].astype(
            np.float32
        )  # the run's stop set
        self.current = next(
            iter(self.learners)
        )  # the model in use: the first candidate until a fit chooses
        self._s = None
        self._grid = None  # the MLP's grid trainings of the last round (``choose_s.GridWarm``)
        self.cv_loss = None

    @property
    def config(self):
        """The config of the model in use, at the s it was fitted with (what rounds and stop signals
        are built from)."""
        return self.learners[self.current].config

    def fit(self, labeled: np.ndarray, w: np.ndarray | None):
        first = len(labeled) <= self.settings.initial  # a new curve: nothing in use yet
        current = None if first else self.learners[self.current].config.model
        y = self.data.y_pool[labeled]
        picked = choose_model.choose(
            self.auto_config,
            self.data.x_pool[labeled].astype(np.float32),
            y[:, None],
            current=current,
            s_prev=None if first else self._s,
            x_pool=self.x_check,
            warm=None if first else self._grid,
        )
        self._grid = picked.grid_state
        label = picked.model.label()
        switched = label != self.current or first
        self.current, self._s, self.cv_loss = label, picked.s, picked.s_choice.cv_loss
        learner = self.learners[label]
        if isinstance(learner, ridge.RidgeLearner):
            fitted = ridge.RidgeFit(
                ridge.fit_ridge(learner.a_pool[labeled], y, picked.s, learner.d, w),
                picked.s,
                labeled,
            )
        else:
            learner.config = learner.config.with_s(picked.s)
            if switched:
                learner.forget()
            fitted = learner.fit(labeled, w)
        return AutoFit(fitted, picked.s, labeled, label)

    def test_metric(self, state: AutoFit) -> float:
        return self.learners[state.model].test_metric(state.fit)

    def model(self, state: AutoFit, seed: int):
        return self.learners[state.model].model(state.fit, seed)
