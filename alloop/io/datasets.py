"""The bundled datasets (``datasets/NAME/{pool,test}.parquet`` and ``meta.json``): where they are and what they hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

from alloop.errors import UserError

DATASETS_ENV = "ALLOOP_DATASETS"


def datasets_dir() -> Path:
    """Bundled datasets: $ALLOOP_DATASETS, else those installed with the package (a wheel has them
    in alloop/datasets, see setup.py), else the source tree's datasets/ folder (editable install)."""
    env = os.environ.get(DATASETS_ENV)
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parents[1] / "datasets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "datasets"


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
        choices = available()
        if not choices:
            raise UserError(
                f"no bundled datasets in {datasets_dir()}: install alloop from its wheel or source "
                f"tree (they ship them), or set ${DATASETS_ENV} to a folder of datasets"
            )
        raise UserError(
            f"no bundled dataset '{name}' (in {datasets_dir()}): choose one of {', '.join(choices)}"
        )
    return json.loads(path.read_text())
