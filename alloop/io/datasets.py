"""The bundled datasets (``datasets/NAME/{pool,test}.parquet`` and ``meta.json``): where they are and what they hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

from alloop.errors import UserError

DATASETS_ENV = "ALLOOP_DATASETS"


def datasets_dir() -> Path:
    """Bundled datasets: $ALLOOP_DATASETS, else the repository's datasets/ folder."""
    env = os.environ.get(DATASETS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "datasets"


def available() -> list[str]:
    root = datasets_dir()
    return (
        sorted(p.name for p in root.iterdir() if (p / "meta.json").exists())
        if root.exists()
        else []
    )


def dataset_meta(name: str) -> dict:
    path = datasets_dir() / name / "meta.json"
    if not path.exists():
        choices = ", ".join(available()) or "none found"
        raise UserError(
            f"no bundled dataset '{name}' (in {datasets_dir()}): choose one of {choices}"
        )
    return json.loads(path.read_text())
