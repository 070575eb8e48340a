"""alloop from Python (a notebook, a script): the calls the CLI makes, returning plain data.

    import alloop
    run = alloop.init_run("houses", pool="pool.parquet", target="price", test="test.parquet")
    batch = run.query(k=20)              # a QueryResult; batch.rows is the DataFrame people fill in
    batch.rows["price"] = ...            # labels from wherever they come from
    run.ingest(batch.rows)               # validates, stores, retrains: an IngestResult
    run.status()["labels"]

Every method is the use case its CLI command runs (``alloop.commands``), so the guarantees hold here
too: a mistake raises ``alloop.UserError`` (what the CLI prints with exit code 2) and leaves the run's
files as they were.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from alloop.errors import UserError
from alloop.io import labelstudio, rundir, tables
from alloop.reporting import Reporter


@dataclass(frozen=True)
class QueryResult:
    round: int
    strategy: str  # what ran (a model strategy falls back to greedy at cold start)
    path: Path  # the query file in the run directory
    rows: pd.DataFrame  # its contents: id, rank, score, the features and empty target columns
    note: str | None = None


@dataclass(frozen=True)
class IngestResult:
    added: int
    labels: int
    outstanding: int
    notes: list = field(default_factory=list)
    trained: dict | None = (
        None  # the training's figures (test RMSE, s, residual, ...), unless train=False
    )


@dataclass(frozen=True)
class Run:
    """A run directory, opened by name (under runs/ or $ALLOOP_RUNS) or path."""

    name: str
    reporter: Reporter = field(default_factory=Reporter, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return rundir.open_run(self.name).path

    def query(
        self, k: int = 20, strategy: str | None = None, fmt: str = "csv", seed: int | None = None
    ) -> QueryResult:
        """Choose the next ``k`` rows to label (``alloop query``)."""
        from alloop.commands.query import query

        with api_wording():
            rec = query(
                self.name, k=k, strategy=strategy, fmt=fmt, seed=seed, reporter=self.reporter
            )
        rows = (
            labelstudio.task_table(rec["path"])
            if fmt == "labelstudio"
            else tables.read_table(rec["path"])
        )
        return QueryResult(rec["round"], rec["strategy"], Path(rec["path"]), rows, rec.get("note"))

    def ingest(
        self,
        labels: pd.DataFrame | str | Path,
        *,
        train: bool = True,
        allow_unqueried: bool = False,
        overwrite: bool = False,
        add_class: bool = False,
        id_col: str | None = None,
        target: str | list[str] | None = None,
    ) -> IngestResult:
        """Add labels (a DataFrame with the id and target columns, or a file) and retrain
        (``alloop ingest``).

        ``id_col`` and ``target``: the labels' names for the id and target column(s), when they
        are not the run's.
        """
        from alloop.commands.ingest import ingest

        opts = dict(
            no_train=not train,
            allow_unqueried=allow_unqueried,
            overwrite=overwrite,
            add_class=add_class,
            reporter=self.reporter,
            id_col=id_col,
            target=[target] if isinstance(target, str) else target,
        )
        if isinstance(labels, pd.DataFrame):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "labels.parquet"
                labels.to_parquet(path, index=False)
                with api_wording(path, "the labels DataFrame"):
                    rec = ingest(self.name, str(path), **opts)
        elif isinstance(labels, (str, Path)):
            with api_wording():
                rec = ingest(self.name, str(labels), **opts)
        else:
            raise UserError(
                f"ingest takes a DataFrame or a file path, got {type(labels).__name__}: pass the filled query rows"
            )
        return IngestResult(
            rec["added"], rec["labels"], rec["outstanding"], list(rec["notes"]), rec.get("trained")
        )

    def train(
        self, *, fresh: bool = False, epochs: int | None = None, s: float | str | None = None
    ) -> dict:
        """Fit on every label so far (``alloop train``): the training's figures."""
        from alloop.commands.train import train

        with api_wording():
            return train(self.name, fresh=fresh, epochs=epochs, s=s, reporter=self.reporter)

    def status(self) -> dict:
        """Counts, round, s, tangent health and the latest metrics (``alloop status --json``)."""
        from alloop.commands.status import status

        return status(self.name)

    def labels(self) -> pd.DataFrame:
        """Every label so far: id, targets, ``round`` (the query round it answers; 0 for seed
        labels and rows no query asked) and ``time`` (when it was ingested, UTC)."""
        return rundir.read_labels(rundir.open_run(self.name))

    def withdraw(
        self, *, rounds: int | list[int] = (), ids: list | None = None, everything: bool = False
    ) -> dict:
        """Return outstanding rows to the pool (``alloop withdraw``): those of query ``rounds``,
        the given ``ids``, or all with ``everything=True``. The query files stay as a record."""
        from alloop.commands.withdraw import withdraw

        rounds = (rounds,) if isinstance(rounds, int) else tuple(rounds)
        with api_wording():
            return withdraw(self.name, rounds=rounds, ids=tuple(ids or ()), everything=everything)


# The command line's words for what the Python API calls arguments, as messages name them.
_ARGUMENTS = {
    "--id-col NAME": "id_col='NAME'",
    "--target NAME": "target='NAME'",
    "--allow-unqueried": "allow_unqueried=True",
    "--overwrite": "overwrite=True",
    "--add-class": "add_class=True",
    "--no-train": "train=False",
    "--round N": "rounds=N",
    "--ids FILE": "ids=[...]",
    "--all": "everything=True",
    "--epochs": "epochs",
    "--fresh": "fresh=True",
    "--labels": "labels",
    "--test": "test",
    "--features": "features",
    "--classes": "classes",
    "--model": "model",
    "--pool": "pool",
    "--strategy": "strategy",
    "--format": "fmt",
    "--target": "target",
    "--id-col": "id_col",
    "-k ": "k=",
}


# Whole commands a message suggests, as the Python calls that do the same.
_CALLS = [
    (
        re.compile(r"`alloop withdraw \S+ --round N` \(or --all\)"),
        "run.withdraw(rounds=N) (or everything=True)",
    ),
    (re.compile(r"`alloop init (\S+) --pool PATH`"), r"alloop.init_run('\1', pool)"),
]


@contextlib.contextmanager
def api_wording(path: Path | None = None, what: str = ""):
    """Re-raise a UserError in the API's words: arguments instead of command-line options, and
    ``what`` the caller passed instead of the temporary file ``path`` it was written to."""
    try:
        yield
    except UserError as e:
        text = str(e)
        if path is not None:
            text = text.replace(f"label file '{path}'", what).replace(str(path), what)
        for pattern, call in _CALLS:
            text = pattern.sub(call, text)
        for flag, arg in _ARGUMENTS.items():
            text = text.replace(flag, arg)
        raise UserError(text) from None


def open_run(name: str, reporter: Reporter | None = None) -> Run:
    """An existing run; UserError if there is none by that name."""
    with api_wording():
        rundir.open_run(name)
    return Run(name, reporter or Reporter())


def init_run(
    name: str,
    pool: str,
    *,
    target: str | list[str] = "target",
    reporter: Reporter | None = None,
    **options,
) -> Run:
    """Create a run over ``pool`` (``alloop init``; options as ``commands.init.init_run`` takes them) and open it."""
    from alloop.commands.init import init_run as create

    targets = [target] if isinstance(target, str) else list(target)
    with api_wording():
        create(name, pool, targets=targets, reporter=reporter, **options)
    return open_run(name, reporter)
