"""The anchors' experiment protocol, numpy only, so that any program can reproduce it.

Import by path, e.g.::

    import importlib.util
    spec = importlib.util.spec_from_file_location("anchor_protocol",
    "benchmarks/anchors/protocol.py") protocol = importlib.util.module_from_spec(spec);
    spec.loader.exec_module(protocol)
"""

import numpy as np


def initial_rows(n_pool, rep, seed, initial):
    """Row positions (in pool-file order) of the initial labeled set of repetition `rep`.

    Uniform without replacement, no stratification (also for classification)."""
    rng = np.random.default_rng([int(seed), int(rep)])
    return rng.choice(int(n_pool), size=int(initial), replace=False)


def label_counts(initial, batch, budget):
    """Numbers of labels at which the model is evaluated: initial, initial+batch, ..., budget."""
    counts = list(range(int(initial), int(budget) + 1, int(batch)))
    if counts[-1] != int(budget):
        counts.append(int(budget))
    return counts
