"""Shared fixtures: seeded generators and small problems built in code."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)
