"""Choosing the rows to label: one registry of strategies for ``alloop query`` and ``alloop
simulate``.

A strategy is one ``Strategy`` object (``base.py``): a per-row streaming score that decides which
rows to keep, and a pick among the kept rows. ``select`` runs one over a pool; the live query (local
or on Ray) and the simulation both call it, so what the simulation measures is what ``alloop query``
does. Adding a strategy is one entry in ``builtin.py`` or ``research.py`` (or a module of its own
listed here).
"""

from __future__ import annotations

import numpy as np

from alloop.errors import UserError
from alloop.io import pool as poolio
from alloop.strategies import builtin, research
from alloop.strategies.base import (
    DEFAULT_BATCH_ROWS,
    Needs,
    Pick,
    Round,
    Selection,
    Strategy,
    cold_start_note,
)  # noqa: F401
from alloop.strategies.base import select as base_select
from alloop.strategies.model import TrainedModel  # noqa: F401

REGISTRY: dict[str, Strategy] = {s.name: s for s in (*builtin.ALL, *research.ALL)}
ALIASES = {"sld-kpp-clip": "sld"}  # earlier name of the default SLD batch (docs/results.md)
DEFAULT = {
    "regression": "herding",
    "classification": "margin",
}  # chosen by the suite's rule: docs/results.md "The default"
MODEL_DEFAULT = {
    ("regression", "mlp"): "lcmd"
}  # the same rule on that model's suite curves, where it differs


def get(name: str, what: str = "strategy") -> Strategy:
    """The strategy called ``name`` (or an alias of it); UserError naming the choices otherwise."""
    strategy = REGISTRY.get(ALIASES.get(name, name))
    if strategy is None:
        raise UserError(f"unknown {what} {name!r}: choose one of {', '.join(names())}")
    return strategy


def names(task: str | None = None, live: bool = False) -> list[str]:
    """Strategy names in registry order; ``task``: those that apply to it; ``live``: those ``alloop
    query`` runs."""
    return [
        n
        for n, s in REGISTRY.items()
        if (task is None or task in s.tasks) and not (live and s.weighted)
    ]


def default_for(task: str, model: str | None = None) -> str:
    """What a query uses unless told: the live strategy with the lowest mean relative area on the
    suite with that kind of model (docs/results.md "The default"): kernel herding for linear,
    polynomial and auto regression (whichever model auto has chosen: that is what the suite
    measured), LCMD in the network's gradient space for an MLP, margin for classification."""
    return MODEL_DEFAULT.get((task, model), DEFAULT.get(task, "sld"))


def for_query(name: str | None, task: str, model: str | None = None) -> Strategy:
    """The strategy a live query of a ``task`` run with a ``model`` kind uses (None: the default),
    after checking it applies."""
    strategy = get(name or default_for(task, model), "--strategy")
    if strategy.weighted:
        raise UserError(
            f"--strategy {strategy.name} refits with importance weights, which only `alloop "
            f"simulate` does: choose one of {', '.join(names(task, live=True))}"
        )
    if task not in strategy.tasks:
        other = "regression" if task == "classification" else "classification"
        raise UserError(
            f"--strategy {strategy.name} is for {other} runs and this is a {task} run: "
            f"choose one of {', '.join(names(task, live=True))}"
        )
    return strategy


def select(
    strategy: Strategy,
    info: poolio.PoolInfo,
    rnd: Round,
    exclude: np.ndarray,
    k: int,
    on_rows=None,
    engine=None,
) -> Selection:
    """Choose ``k`` rows of the pool not in ``exclude``; a model strategy at cold start runs greedy
    (and says so). ``engine``: None streams the pool in this process; ``distributed.RayEngine``
    keeps the same rows on Ray."""
    return base_select(strategy, info, rnd, exclude, k, REGISTRY["greedy"], on_rows, engine)
