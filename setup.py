"""Packaging beyond pyproject.toml: the bundled demo datasets go into the wheel as package data.

They live at the repository's top (``datasets/NAME/{meta.json,pool.parquet,test.parquet,...}``,
where ``datasets/build.py`` writes them and the tests and benchmarks read them); a build copies
them to ``alloop/datasets/`` inside the wheel, where ``alloop.io.datasets`` finds them after a
non-editable install. An editable install reads them in place.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATASETS = Path(__file__).resolve().parent / "datasets"
SHIPPED = ("meta.json", "*.parquet")


class BuildWithDatasets(build_py):
    """build_py that also copies every dataset folder with a meta.json into alloop/datasets."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for meta in sorted(DATASETS.glob("*/meta.json")):
            target = Path(self.build_lib) / "alloop" / "datasets" / meta.parent.name
            target.mkdir(parents=True, exist_ok=True)
            for pattern in SHIPPED:
                for f in sorted(meta.parent.glob(pattern)):
                    self.copy_file(str(f), str(target / f.name))


setup(cmdclass={"build_py": BuildWithDatasets})
