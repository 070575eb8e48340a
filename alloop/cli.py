"""The ``alloop`` command line: parse, call one use case, render. The only module that imports typer and rich.

Progress and messages go to stderr, results to stdout; ``--json`` prints one JSON object for scripts.
A user's mistake (``UserError``) prints one line on stderr and exits 2, with no traceback.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

try:  # recent typer vendors click; older ones use click itself
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError

from alloop.config import default_model, parse_s
from alloop.errors import UserError, drops_exceptions
from alloop.io.atomic import to_json_value
from alloop.io.pool import with_endpoint
from alloop.reporting import Reporter

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _error(message: str, as_json: bool = False) -> None:
    """One line on stderr; the message is printed as is (a '[' in a path is not rich markup).

    With ``--json`` the error is also one JSON object on stdout, for the script reading it.
    """
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps({"error": message, "exit_code": 2}) + "\n")


def _wants_json(ctx: typer.Context) -> bool:
    """Whether the command line asked for --json (read before the command parsed its options)."""
    args = [*getattr(ctx, "protected_args", []), *ctx.args]
    return "--json" in args[: args.index("--") if "--" in args else len(args)]


class _Commands(TyperGroup):
    """Every command's errors handled here, so ``main()`` and typer's CliRunner behave the same.

    A ``UserError`` or a bad option value becomes one line on stderr and exit code 2, never a
    traceback; Ctrl-C says the run is at its last commit and exits 130.
    """

    def invoke(self, ctx: typer.Context):
        as_json = _wants_json(ctx)
        try:
            return super().invoke(ctx)
        except UserError as e:
            _error(str(e), as_json)
        except UsageError as e:
            where = e.ctx.command_path if e.ctx else ctx.command_path
            _error(f"{e.format_message()} (see `{where} --help`)", as_json)
        except KeyboardInterrupt as e:
            err.print("interrupted: the run is at its last committed state", highlight=False)
            raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
        raise typer.Exit(2)


app = typer.Typer(
    help="Active learning with regularity tangents: pick the rows worth labeling, one round at a time.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: rich markup would eat "[ray]" in 'alloop[ray]'
)


def _show_version(value: bool) -> None:
    if value:
        import alloop

        out.print(f"alloop {alloop.__version__}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_show_version,
        help="Print alloop's version and exit.",
    ),
) -> None:
    """Active learning with regularity tangents: pick the rows worth labeling, a round at a time."""


RUN_ARG = typer.Argument(
    ..., help="Run name (under runs/, or $ALLOOP_RUNS) or a path to a run directory."
)
WAIT_OPT = typer.Option(
    5.0, "--wait", help="Seconds to wait for another alloop command on the same run."
)
TRAIN_DEVICES_OPT = typer.Option(
    1,
    "--devices",
    help="Split every training minibatch over this many local devices (data-parallel SGDF).",
)
STRATEGY_OPT = typer.Option(
    None,
    "--strategy",
    help="herding (rows that make the labels look like the pool: the regression default), lcmd (the largest cluster's most "
    "distant row in the model's gradient space: the default for --model mlp), sld (SLD-weighted k-means++ batch), "
    "sld-topk (plain top-k SLD), random, committee or greedy; classification also margin (its default), entropy, least-confident. "
    "The research variants of `alloop simulate --strategies` are accepted too.",
)
JSON_OPT = typer.Option(False, "--json", help="Print one JSON object on stdout instead of text.")


class RichReporter(Reporter):
    """Progress bars and messages on stderr; silent bars when stderr is not a terminal."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator:
        if self.quiet or not err.is_terminal:
            yield lambda n=1: None
            return
        cols = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*cols, console=err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    def info(self, message: str) -> None:
        if not self.quiet:
            err.print(f"[cyan]note:[/] {escape(message)}", highlight=False)

    def warn(self, message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def _split(value: Optional[str]) -> Optional[List[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _sizes(value: str, option: str) -> List[int]:
    """Comma-separated integers, e.g. --hidden 64,64; anything else is a user error."""
    try:
        return [int(v) for v in _split(value) or []]
    except ValueError:
        raise UserError(
            f"{option} takes comma-separated integers, got {value!r}: try {option} 64,64"
        ) from None


def _emit(obj: dict, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps(to_json_value(obj), allow_nan=False) + "\n"
        )  # NaN figures -> null
    else:
        out.print(text, highlight=False, markup=False)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command()
def init(
    name: str = typer.Argument(
        ..., help="Name of the new run (created under runs/) or a directory path."
    ),
    pool: Optional[str] = typer.Option(
        None,
        "--pool",
        help="Unlabeled pool: a Parquet file or a directory of Parquet files, local or s3://BUCKET/PREFIX, gs://... "
        "(default with --base: the base's).",
    ),
    endpoint_url: Optional[str] = typer.Option(
        None,
        "--endpoint-url",
        help="S3 endpoint for an s3:// pool (e.g. http://localhost:9000); default $AWS_ENDPOINT_URL, else AWS.",
    ),
    base: Optional[str] = typer.Option(
        None,
        "--base",
        help="Inherit this trained run's model, features and parameters θ0, regularized towards θ0 (a user run).",
    ),
    trainer: Optional[str] = typer.Option(
        None,
        "--trainer",
        help="sgdf, or full-batch newton, lbfgs or cg (Newton-CG) for small labeled sets (default: sgdf; newton with "
        "--base).",
    ),
    id_col: str = typer.Option("id", "--id-col", help="Column holding each row's unique id."),
    features: Optional[str] = typer.Option(
        None,
        "--features",
        help="Comma-separated feature columns (default: every numeric column but id and target).",
    ),
    target: str = typer.Option(
        "target", "--target", help="Target column name(s), comma-separated for several outputs."
    ),
    labels: Optional[str] = typer.Option(
        None, "--labels", help="Seed labels: CSV/Parquet/JSONL with the id and target columns."
    ),
    test: Optional[str] = typer.Option(
        None, "--test", help="Held-out labeled set (features + target) used for metrics only."
    ),
    task: str = typer.Option("regression", "--task", help="regression or classification."),
    classes: Optional[str] = typer.Option(
        None,
        "--classes",
        help="Classification: the class labels, comma-separated, in output order (default: those of the seed labels and test"
        " set).",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="linear, poly, mlp, or auto (regression with --s auto: every training chooses linear, poly 2, poly 3 or, from 40 labels, "
        "an MLP 64,64 by the cross-validated loss of the labels so far; status says which and why). Default: auto for regression "
        "(linear with a numeric --s), linear for classification.",
    ),
    degree: int = typer.Option(
        3,
        "--degree",
        help="Degree of the poly model: each feature's powers x, x², …, up to it, with no "
        "interaction terms (not scikit-learn's PolynomialFeatures).",
    ),
    hidden: str = typer.Option(
        "64,64", "--hidden", help="Hidden layer sizes of the mlp, comma-separated."
    ),
    activation: str = typer.Option(
        "tanh", "--activation", help="mlp activation: tanh, gelu, softplus, silu, sigmoid or relu."
    ),
    curvature: Optional[str] = typer.Option(
        None,
        "--curvature",
        help="Curvature for the tangent: hessian or gauss-newton (default by model).",
    ),
    s: Optional[str] = typer.Option(
        None,
        "--s",
        help="Regularity s (weight of the L2 regularizer against the sum of losses): auto (chosen every round by k-fold CV "
        "and hypergradient steps), loocv (closed-form LOOCV, linear/poly) or a number. Default: auto for regression "
        "(but 1 with --model mlp), 1 for classification.",
    ),
    folds: Optional[int] = typer.Option(
        None,
        "--folds",
        help="Folds of the cross-validation that chooses s (default 5; LOOCV at 30 labels or fewer).",
    ),
    tangent: str = typer.Option(
        "sgdf",
        "--tangent",
        help="How the tangent is computed: sgdf (during training), cg or exact (after).",
    ),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam or sgd."),
    lr: float = typer.Option(1e-2, "--lr", help="Learning rate (start of a cosine decay)."),
    momentum: float = typer.Option(0.0, "--momentum", help="Momentum for sgd."),
    epochs: int = typer.Option(
        100,
        "--epochs",
        help="Epochs per training (raised so that training takes at least --min-steps steps).",
    ),
    min_steps: Optional[int] = typer.Option(
        None,
        "--min-steps",
        help="Fewest optimizer steps per training, however few the labels (default 2000).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Minibatch size."),
    seed: int = typer.Option(
        0, "--seed", help="Seed for initialization, minibatches and random choices."
    ),
    group_col: Optional[str] = typer.Option(
        None,
        "--group-col",
        help="Integer column naming each row's group (store, user, site): per-group offset and "
        "slopes under a learned per-group regularity (README, Grouped data). Regression.",
    ),
    max_groups: int = typer.Option(
        100_000, "--max-groups", help="Refuse a --group-col with more groups than this."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Create a run over an unlabeled pool.

    Example: alloop init houses --pool data/pool.parquet --target price --test data/test.parquet
    """
    from alloop.commands import inherit
    from alloop.commands import init as init_cmd

    if base and group_col:
        raise UserError("--group-col makes a new grouped run: it does not combine with --base")
    if base:
        res = inherit.init_user_run(
            name,
            base,
            pool=pool,
            labels=labels,
            test=test,
            trainer=trainer or "newton",
            reporter=RichReporter(),
        )
        _emit(
            res,
            as_json,
            f"created {res['run']} inheriting {res['base']}: {res['labels']} labels\nnext: alloop query {name}",
        )
        return
    if pool is None:
        raise UserError("alloop init needs --pool PATH (or --base RUN to inherit a trained run)")
    pool = with_endpoint(pool, endpoint_url)
    s_value = None if s is None else parse_s(s)
    kind = model or ("linear" if group_col else default_model(task, s_value))
    spec = init_cmd.model_spec(
        kind,
        degree=degree,
        hidden=_sizes(hidden, "--hidden"),
        activation=activation,
        curvature=curvature,
    )
    train = {
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        **({} if min_steps is None else {"min_steps": min_steps}),
    }
    res = init_cmd.init_run(
        name,
        pool,
        id_col=id_col,
        features=_split(features),
        targets=_split(target) or ["target"],
        labels=labels,
        test=test,
        model=spec,
        s=s_value,
        tune=None if folds is None else {"folds": folds},
        train=train,
        tangent=tangent,
        task=task,
        classes=_split(classes),
        trainer=trainer or "sgdf",
        group_col=group_col,
        max_groups=max_groups,
        reporter=RichReporter(),
    )
    text = f"created {res['run']}: {res['pool_rows']} pool rows, {len(res['features'])} features, {res['labels']} labels\nnext: alloop query {name}"
    _emit(res, as_json, text)


@app.command()
def train(
    name: str = RUN_ARG,
    fresh: bool = typer.Option(
        False, "--fresh", help="Start from a new initialization instead of the last checkpoint."
    ),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", help="Override the run's epoch count for this training."
    ),
    s: Optional[str] = typer.Option(
        None, "--s", help="Override the run's s for this training: a number, auto or loocv."
    ),
    folds: Optional[int] = typer.Option(
        None, "--folds", help="Folds of the cross-validation that chooses s (with auto)."
    ),
    devices: int = TRAIN_DEVICES_OPT,
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train with SGDF on all labels so far and checkpoint θ, θ̇ and the metrics.

    Example: alloop train houses --s auto --folds 5
    """
    from alloop.commands.train import train as train_run

    rec = train_run(
        name,
        fresh=fresh,
        epochs=epochs,
        s=None if s is None else parse_s(s),
        folds=folds,
        devices=devices,
        wait=wait,
        reporter=RichReporter(),
    )
    _emit(rec, as_json, _figures_line(rec))


def _figures_line(rec: dict) -> str:
    keys = [
        k
        for k in (
            "labels",
            "s",
            "train_loss",
            "test_rmse",
            "test_mae",
            "test_accuracy",
            "test_log_loss",
            "test_macro_f1",
            "residual",
        )
        if k in rec
    ]
    return "trained: " + ", ".join(f"{k} {_fmt(rec[k])}" for k in keys)


@app.command()
def query(
    name: str = RUN_ARG,
    k: int = typer.Option(20, "-k", "--k", help="How many rows to ask about."),
    strategy: Optional[str] = STRATEGY_OPT,
    fmt: str = typer.Option(
        "csv",
        "--format",
        help="Query file format: csv, parquet, jsonl, or labelstudio (Label Studio tasks with predictions, and the labeling config).",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed for random and greedy choices (default: from the run)."
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local (stream the pool in this process) or ray (score it in actors on a Ray cluster; pip install 'alloop[ray]'): "
        "the same query file.",
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --engine ray: the cluster, auto (the one this machine joined) or ray://HOST:10001 (default: a local one).",
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="With --engine ray: scoring actors (default: one per 4 CPUs of the cluster).",
    ),
    keep_workers: float = typer.Option(
        0.0,
        "--keep-workers",
        metavar="SECONDS",
        help="With --engine ray on a running cluster (--address): keep the scoring actors there for the next queries of the same model "
        "and features (no start, no JAX import, no compilation) until idle this many seconds; `alloop release-workers` ends them sooner.",
    ),
    devices: int = typer.Option(
        1,
        "--devices",
        help="Split every batch over this many local devices (data-parallel scoring, and training if the model must be "
        "retrained first).",
    ),
    reask_after: Optional[float] = typer.Option(
        None,
        "--reask-after",
        metavar="DAYS",
        help="Rows asked by a query over this many days ago and still unanswered go back to the "
        "pool first, so this query may ask them again.",
    ),
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Score every unlabeled pool row and write the best k to runs/NAME/queries/round-NNNN.<fmt>.

    Fill in the target column of that file, then `alloop ingest NAME FILE`. -k above the rows
    left to ask is refused; `alloop withdraw` returns unanswered rows to the pool.
    Example: alloop query houses -k 20   (on a Ray cluster: alloop query houses --engine ray --address auto)
    """
    from alloop.io.ray_cluster import cluster

    with (
        cluster(address) if engine == "ray" else contextlib.nullcontext()
    ):  # Ray first: started before JAX is loaded
        from alloop.commands.query import query as query_run

        rec = query_run(
            name,
            k=k,
            strategy=strategy,
            fmt=fmt,
            seed=seed,
            devices=devices,
            wait=wait,
            reporter=RichReporter(),
            engine=engine,
            address=address,
            workers=workers,
            keep_workers=keep_workers,
            reask_after=reask_after,
        )
    if not as_json:
        err.print(_query_next_step(name, rec), highlight=False, markup=False)
    _emit(rec, as_json, rec["path"])


def _query_next_step(name: str, rec: dict) -> str:
    """What to do with the query file just written, naming the real paths."""
    head = f"round {rec['round']}: {rec['rows']} rows chosen by {rec['strategy']}"
    if "labeling_config" in rec:
        config = Path(rec["path"]).parent.parent / rec["labeling_config"]
        return (
            f"{head}; in Label Studio paste {config} as the labeling interface, import "
            f"{rec['path']}, label, export, then `alloop ingest {name} EXPORT`"
        )
    return f"{head}; fill in the target column, then `alloop ingest {name} {rec['path']}`"


@app.command("release-workers")
def release_workers(
    address: Optional[str] = typer.Option(
        "auto",
        "--address",
        help="The Ray cluster: auto (the one this machine joined) or ray://HOST:10001.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """End the scoring actors that `alloop query --engine ray --keep-workers` left on a Ray cluster (all of them, every model).

    Example: alloop release-workers --address auto
    """
    from alloop.io.ray_cluster import cluster, release

    with cluster(address) as ray:
        n = release(ray)
    _emit({"released": n}, as_json, f"released {n} kept scoring actor(s)")


@app.command()
def ingest(
    name: str = RUN_ARG,
    file: str = typer.Argument(
        ...,
        help="CSV, Parquet or JSONL with the id and target columns (e.g. a filled-in query file), or a Label Studio export (JSON, JSON-MIN, CSV).",
    ),
    no_train: bool = typer.Option(False, "--no-train", help="Store the labels without retraining."),
    allow_unqueried: bool = typer.Option(
        False, "--allow-unqueried", help="Accept labels for rows that were never queried."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace labels that differ from stored ones."
    ),
    add_class: bool = typer.Option(
        False,
        "--add-class",
        help="Classification: accept labels of new classes (the model gains an output for each).",
    ),
    resolve: str = typer.Option(
        "latest",
        "--resolve",
        help="Label Studio exports: several annotations of a task give latest, mean (regression) or majority (classification).",
    ),
    id_col: Optional[str] = typer.Option(
        None,
        "--id-col",
        help="The file's id column, when it is not named as the run's.",
    ),
    target: Optional[str] = typer.Option(
        None,
        "--target",
        help="The file's target column(s), comma-separated in the run's target order, when they "
        "are not named as the run's.",
    ),
    devices: int = TRAIN_DEVICES_OPT,
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Validate returned labels, add them to the run and retrain.

    Rows whose target is left blank stay outstanding; a skipped Label Studio task goes back to the
    pool. Example: alloop ingest houses runs/houses/queries/round-0001.csv
    """
    from alloop.commands.ingest import ingest as ingest_run

    rec = ingest_run(
        name,
        file,
        no_train=no_train,
        allow_unqueried=allow_unqueried,
        overwrite=overwrite,
        add_class=add_class,
        resolve=resolve,
        devices=devices,
        wait=wait,
        reporter=RichReporter(),
        id_col=id_col,
        target=_split(target),
    )
    text = f"added {rec['added']} labels ({rec['labels']} in all, {rec['outstanding']} outstanding)"
    if "trained" in rec:
        text += "\n" + _figures_line(rec["trained"])
    _emit(rec, as_json, text)


@app.command()
def withdraw(
    name: str = RUN_ARG,
    round_: Optional[List[int]] = typer.Option(
        None, "--round", help="Return the unanswered rows of this query round (repeatable)."
    ),
    ids: Optional[str] = typer.Option(
        None,
        "--ids",
        metavar="FILE",
        help="Return the ids listed in FILE: a CSV/Parquet/JSONL with the id column, or a .txt "
        "file of one id per line.",
    ),
    id_col: Optional[str] = typer.Option(
        None, "--id-col", help="The id column of the --ids file (default: the run's)."
    ),
    everything: bool = typer.Option(False, "--all", help="Return every outstanding row."),
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Return outstanding (asked, unanswered) rows to the pool, so a later query may ask them again.

    The query files stay in the run as the record of what was asked.
    Example: alloop withdraw houses --round 3
    """
    from alloop.commands.withdraw import withdraw as withdraw_run

    rec = withdraw_run(
        name,
        rounds=tuple(round_ or ()),
        ids_file=ids,
        id_col=id_col,
        everything=everything,
        wait=wait,
    )
    text = f"returned {rec['withdrawn']} rows to the pool ({rec['outstanding']} still outstanding)"
    _emit(rec, as_json, text)


@app.command("runs")
def list_runs(as_json: bool = JSON_OPT) -> None:
    """List the runs under runs/ (or $ALLOOP_RUNS): labels, outstanding rows, round, task.

    Example: alloop runs
    """
    from alloop.commands.runs import list_runs as runs_of

    rows = runs_of()
    lines = [
        f"{r['name']}: {r['task']}, {r['labels']} labels, {r['outstanding']} outstanding, "
        f"round {r['round']}"
        if "error" not in r
        else f"{r['name']}: unreadable ({r['error']})"
        for r in rows
    ]
    _emit({"runs": rows}, as_json, "\n".join(lines) or "no runs yet: create one with alloop init")


@app.command()
def status(
    name: str = RUN_ARG,
    as_json: bool = JSON_OPT,
    stop: List[str] = typer.Option(
        [],
        "--stop",
        help="Override a stopping threshold, NAME=NUMBER (change_threshold, change_rounds, kappa_threshold, kappa_window, "
        "cv_tolerance, cv_window, sld_fraction); repeatable.",
    ),
) -> None:
    """Show labels, pool size, outstanding queries, rounds, s, tangent health, the latest metrics and whether to stop labeling.

    Example: alloop status houses --json
    """
    from alloop.commands.status import status as run_status

    st = run_status(name, _stop_overrides(stop))
    if as_json:
        _emit(st, True, "")
        return
    table = Table(show_header=False, box=None)
    for key in (
        "run",
        "task",
        "model",
        "pool",
        "pool_rows",
        "features",
        "labels",
        "outstanding",
        "round",
        "s",
        "s_model",
        "trained_on",
        "stale",
        "residual",
    ):
        table.add_row(key, _fmt(st[key]))
        if key == "model" and st["model"] == "auto":
            table.add_row("model now", escape(_model_now(st)))
        if key == "task" and st.get("classes"):
            table.add_row("classes", ", ".join(st["classes"]))
    if st.get("labels_by_round"):
        table.add_row("labels by round", _by_round(st["labels_by_round"]))
    if st.get("outstanding_by_round"):
        table.add_row("outstanding by round", _by_round(st["outstanding_by_round"]))
    if st.get("s_by_round"):
        trainings = st["s_by_round"][-8:]
        table.add_row("s by labels", ", ".join(f"{r['labels']}: {_fmt(r['s'])}" for r in trainings))
    for key, v in st["figures"].items():
        if key != "residual":
            table.add_row(key, _fmt(v))
    sp = st["stopping"]
    table.add_row("stop", f"{'yes' if sp['stop'] else 'not yet'} (by {sp['rule']})")
    for reason in sp["reasons"]:
        table.add_row("", escape(reason))
    out.print(table)
    if st.get("groups"):
        out.print(_group_table(st["groups"]))
    for w in st["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


GROUPS_SHOWN = 20


def _group_table(groups: list[dict]) -> Table:
    """Groups by labels, most first (the first GROUPS_SHOWN; --json has all): labels, c, dc/ds."""
    rows = sorted(groups, key=lambda g: -g["labels"])
    title = f"groups ({len(rows)}, {min(len(rows), GROUPS_SHOWN)} with the most labels shown)"
    table = Table("group", "labels", "c", "dc/ds", title=title, box=None)
    for g in rows[:GROUPS_SHOWN]:
        table.add_row(str(g["group"]), str(g["labels"]), _fmt(g["c"]), _fmt(g["dc_ds"]))
    return table


def _model_now(st: dict) -> str:
    """The model an auto run uses now and why, without saying its name twice."""
    why = (st.get("model_choice") or {}).get("reason", "linear until the first training")
    now = st["model_now"]
    if why.startswith(f"{now}: "):
        why = why[len(now) + 2 :]
    elif why.startswith(f"kept {now}: "):
        why = "kept: " + why[len(now) + 7 :]
    return f"{now} ({why})"


def _by_round(counts: dict) -> str:
    """{round: count} as '0: 3, 1: 5' (round 0: seed labels and rows no query asked)."""
    return ", ".join(f"{r}: {n}" for r, n in counts.items())


def _stop_overrides(items: List[str]) -> dict:
    """--stop NAME=NUMBER options as a dict of numbers (ints where the text is one)."""
    outd = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            outd[key.strip()] = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise UserError(
                f"--stop {item!r} is not NAME=NUMBER: write e.g. --stop change_threshold=0.02"
            ) from None
    return outd


@app.command("tune-s")
def tune_s(
    name: str = RUN_ARG,
    plot: bool = typer.Option(
        False, "--plot", help="Draw the curve as a PNG (the paper's Figure 2)."
    ),
    out_png: Optional[str] = typer.Option(
        None, "--out", help="Where the PNG goes (default runs/NAME/plots/tune-s-round-NNNN.png)."
    ),
    s_min: float = typer.Option(1e-3, "--s-min", help="Smallest s of the grid."),
    s_max: float = typer.Option(1e4, "--s-max", help="Largest s of the grid."),
    per_decade: int = typer.Option(6, "--per-decade", help="Grid points per factor of 10 in s."),
    folds: Optional[int] = typer.Option(
        None, "--folds", help="Folds of the cross-validation (default: the run's)."
    ),
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Show the validation error over a log grid of s, with its local minima and the s that auto would choose.

    Trains fold models only (the run's model is not changed). Example: alloop tune-s houses --plot
    """
    from alloop.commands.tune import tune_s as tune_run

    rec = tune_run(
        name,
        plot=plot,
        out=out_png,
        s_min=s_min,
        s_max=s_max,
        per_decade=per_decade,
        folds=folds,
        wait=wait,
        reporter=RichReporter(),
    )
    curve = rec["curve"]
    lines = [f"{'s':>10}  {curve['cv_label']}"] + [
        f"{s:>10.4g}  {v:.5g}" for s, v in zip(curve["s"], curve["cv"])
    ]
    lines.append(
        f"chosen s = {rec['s']:.4g} ({rec['mode']}, CV loss {rec['cv_loss']:.5g}); grid best s = {rec['grid_best_s']:.4g}; "
        f"local minima at s = {', '.join(f'{m:.3g}' for m in rec['local_minima'])}"
    )
    if rec["plot"]:
        lines.append(f"plot: {rec['plot']}")
    _emit(rec, as_json, "\n".join(lines))


@app.command("base-update")
def base_update(
    base: str = typer.Argument(..., help="The base run to fold labels into."),
    users: List[str] = typer.Option(
        ..., "--from", help="A user run made with --base BASE (repeat for several)."
    ),
    wait: float = WAIT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Fold user runs' labels back into their base run and retrain it (warm start).

    User runs keep the θ0 they were made with; `alloop status USER` says when the base changed.
    Example: alloop base-update shared --from alice --from bob
    """
    from alloop.commands import inherit

    rec = inherit.base_update(base, users, wait=wait, reporter=RichReporter())
    text = f"added {rec['added']} labels to {base} ({rec['labels']} in all)"
    if "trained" in rec:
        text += "\n" + _figures_line(rec["trained"])
    _emit(rec, as_json, text)


@app.command("simulate-users")
def simulate_users(
    dataset: str = typer.Option(
        "powerplant", "--dataset", help="Bundled regression dataset under datasets/."
    ),
    groups: int = typer.Option(4, "--groups", help="Users: quantile groups of one feature."),
    by: Optional[str] = typer.Option(
        None, "--by", help="Feature whose quantiles define the users (default: the first)."
    ),
    base_labels: int = typer.Option(
        200,
        "--base-labels",
        help="Labels the base model is fitted on (from the other users' rows).",
    ),
    rounds: int = typer.Option(4, "--rounds", help="Rounds per user."),
    k: int = typer.Option(5, "-k", "--k", help="Labels per round."),
    s: float = typer.Option(1.0, "--s", help="Regularity s."),
    reps: int = typer.Option(10, "--reps", help="Repetitions."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the curves to this CSV."),
    as_json: bool = JSON_OPT,
) -> None:
    """Compare inherited user runs (init --base) with cold-started ones over the first rounds.

    Example: alloop simulate-users --dataset powerplant --rounds 4 -k 5
    """
    from alloop.sim import users as sim_users

    cfg = sim_users.UsersConfig(
        groups=groups, by=by, base_labels=base_labels, rounds=rounds, k=k, s=s, reps=reps, seed=seed
    )
    res, table = sim_users.on_dataset(dataset, cfg, out)
    _emit(
        res,
        as_json,
        f"mean test RMSE of the users' models by labels per user ({dataset}, {reps} reps):\n{table}",
    )


@app.command()
def verify(
    name: str = RUN_ARG,
    repair: bool = typer.Option(
        False, "--repair", help="Remove leftovers of interrupted commands."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Check that the run's files agree with its last commit (hashes, counts, checkpoint shape).

    Exits 1 when something is wrong. Example: alloop verify houses
    """
    from alloop.commands.verify import verify_run

    res = verify_run(name, repair=repair)
    for n in res["notes"]:
        err.print(f"note: {escape(n)}", highlight=False)
    lines = [f"problem: {p}" for p in res["problems"]] or [f"ok: {res['run']} is consistent"]
    _emit(res, as_json, "\n".join(lines))
    if not res["ok"]:
        raise typer.Exit(1)


@app.command()
def demo(
    dataset: str = typer.Option("diabetes", "--dataset", help="Bundled dataset under datasets/."),
    rounds: int = typer.Option(5, "--rounds", help="Label-query rounds."),
    k: int = typer.Option(10, "-k", "--k", help="Rows labeled per round."),
    initial: int = typer.Option(
        10, "--initial", help="Random seed labels (unless the dataset ships its own)."
    ),
    strategy: Optional[str] = STRATEGY_OPT,
    name: Optional[str] = typer.Option(
        None, "--name", help="Run name (default demo-DATASET, numbered if taken)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the whole cycle on a bundled dataset, a simulated labeler answering from its target column.

    Example: alloop demo --dataset diabetes --rounds 5
    """
    from alloop.commands import demo as demo_mod

    def show(row: dict) -> None:
        if not as_json:
            figures = ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k.startswith("test_"))
            out.print(f"round {row['round']}: {row['labels']} labels, {figures}", highlight=False)

    res = demo_mod.run_demo(
        dataset,
        rounds=rounds,
        k=k,
        initial=initial,
        strategy=strategy,
        name=name,
        seed=seed,
        reporter=RichReporter(),
        on_round=show,
    )
    _emit(res, as_json, f"run directory: {res['run']}")


@app.command()
def simulate(
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Bundled dataset under datasets/ (instead of --pool/--test)."
    ),
    pool: Optional[str] = typer.Option(
        None, "--pool", help="Pool with its target column (Parquet file or directory)."
    ),
    test: Optional[str] = typer.Option(
        None, "--test", help="Held-out labeled set for the test metric."
    ),
    target: str = typer.Option("target", "--target", help="Target column."),
    id_col: str = typer.Option("id", "--id-col", help="Id column."),
    task: Optional[str] = typer.Option(
        None,
        "--task",
        help="regression (test RMSE) or classification (test error rate); default: the dataset's, else regression.",
    ),
    strategies: Optional[str] = typer.Option(
        None,
        "--strategies",
        help="Comma-separated strategies, the same objects `alloop query --strategy` runs (default: herding,sld,sld-topk,random,"
        "greedy,igs,committee,emcm; classification: margin,sld,herding,entropy,random,greedy). Also vr, sld-seq, sld-lookahead, "
        "sld-power, sld-power-iw (simulation only), sld-density, sld-kpp, kpp, sld-herding, lcmd, sld-lcmd, sld-mix, sld-mix-iw (simulation only), "
        "sld-mix-auto, herding-grad, least-confident.",
    ),
    budget: int = typer.Option(200, "--budget", help="Labels at the end of each curve."),
    batch: int = typer.Option(10, "--batch", help="Rows labeled per round."),
    initial: int = typer.Option(
        10,
        "--initial",
        help="Random initial labels (the same for every strategy within a repetition).",
    ),
    reps: int = typer.Option(20, "--reps", help="Repetitions (different initial labels)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same numbers."),
    out: Optional[str] = typer.Option(
        None, "--out", help="Output directory (default runs/simulate-NAME); rerun to resume."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="linear, poly, mlp or auto (linear/poly 2/poly 3/MLP by CV each round) (default: the dataset's demo model, else as "
        "`alloop init` sets it: auto for regression, linear for classification).",
    ),
    degree: int = typer.Option(
        3,
        "--degree",
        help="Degree of the poly model: each feature's powers x, x², …, up to it, with no "
        "interaction terms (not scikit-learn's PolynomialFeatures).",
    ),
    hidden: str = typer.Option(
        "64,64", "--hidden", help="Hidden layer sizes of the mlp, comma-separated (init's default)."
    ),
    s: Optional[str] = typer.Option(
        None,
        "--s",
        help="Regularity: a number, or auto/loocv (linear/poly regression: chosen every round as `alloop train` does). "
        "Default: as `alloop init` sets it (auto for linear, poly and auto regression models, 1 otherwise).",
    ),
    jobs: Optional[int] = typer.Option(
        None,
        "--jobs",
        help="Worker processes (default: one per CPU core); with --engine ray, actors (default: "
        "one per CPU of the cluster).",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local (worker processes on this machine) or ray (actors on a Ray cluster; "
        "pip install 'alloop[ray]'): the same curves.csv.",
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --engine ray: the cluster, auto (the one this machine joined) or "
        "ray://HOST:10001 (default: a local one).",
    ),
    endpoint_url: Optional[str] = typer.Option(
        None,
        "--endpoint-url",
        help="S3 endpoint for s3:// --pool/--test (e.g. http://localhost:9000); default $AWS_ENDPOINT_URL, else AWS.",
    ),
    stop: List[str] = typer.Option(
        [],
        "--stop",
        help="Stopping threshold for the stop report, NAME=NUMBER as for `alloop status --stop`; repeatable "
        "(replayed over the recorded signals: nothing is rerun).",
    ),
    group_col: Optional[str] = typer.Option(
        None,
        "--group-col",
        help="Integer column naming each row's group: replay the grouped linear model of "
        "`init --group-col` (fitted exactly every round; --s auto: 5-fold CV over 1e-2..1e3).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Replay active learning on a fully labeled pool, strategy against strategy, and summarize.

    Also reports, per strategy, where each stopping rule of `alloop status` would have stopped, the labels
    that saved and the test error given up. Writes curves.csv, summary.md, summary.json and curves.png to --out.
    Example: alloop simulate --dataset diabetes --strategies sld,sld-topk,random --reps 5
    SIGINT or SIGTERM stops it and its workers; finished curves stay, and a rerun resumes.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a script:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a SIGINT still means stop
    from alloop.sim import simulate as sim

    spec = (
        None
        if model is None
        else sim.model_of(model, degree=degree, hidden=_sizes(hidden, "--hidden"))
    )
    try:
        res = sim.run_simulation(
            dataset=dataset,
            pool=with_endpoint(pool, endpoint_url) if pool else pool,
            test=with_endpoint(test, endpoint_url) if test else test,
            target=target,
            id_col=id_col,
            strategy_list=_split(strategies),
            reps=reps,
            out=out,
            jobs=jobs,
            model=spec,
            s=s,
            task=task,
            reporter=RichReporter(),
            stop=_stop_overrides(stop),
            engine=engine,
            address=address,
            budget=budget,
            batch=batch,
            initial=initial,
            seed=seed,
            **({"group_col": group_col} if group_col else {}),
        )
    except KeyboardInterrupt as e:  # Ctrl-C, SIGINT, or SIGTERM (Terminated: cli's or the engine's)
        err.print(
            "interrupted: finished curves are kept in curves.csv; run the same command again to resume",
            highlight=False,
        )
        raise typer.Exit(143 if type(e).__name__ == "Terminated" else 130) from None
    files = f"\nfiles: {res['out']}/{{curves.csv,summary.md,summary.json,curves.png}}"
    _emit({k: v for k, v in res.items() if k != "markdown"}, as_json, res["markdown"] + files)


@app.command()
def figure(
    name: str = typer.Argument(..., help="Which figure: paper-1d."),
    out: str = typer.Option("paper-1d.png", "--out", help="PNG file to write."),
    delta: float = typer.Option(
        0.1, "--delta", help="Finite-difference step δ as a fraction of s."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Draw a figure of the paper; paper-1d is §3.3's degree-5 example with its SLD curve.

    Example: alloop figure paper-1d --out paper-1d.png
    """
    from pathlib import Path

    from alloop.sim import figure as sim_figure

    res = sim_figure.draw_named(name, Path(out), delta)
    _emit(
        res,
        as_json,
        f"s = {res['s']:.4g} (LOOCV), SLD largest at x = {res['sld_argmax_x']:.3f}, "
        f"finite difference within {res['fd_rel_error']:.1%}\n{res['png']}",
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds as Ctrl-C does."""


def _raise_terminated(signum, frame) -> None:
    if drops_exceptions(frame):  # raised there it would be printed and lost: deliver it again soon
        threading.Timer(0.05, _thread.interrupt_main, (signum,)).start()
        return
    raise Terminated()


def stop_like_ctrl_c() -> None:
    """Make SIGTERM (``kill``, a scheduler, a wrapper) stop the command as Ctrl-C does.

    Python's default for SIGTERM ends the process at once, skipping every ``finally``: a local Ray
    cluster started by ``query --engine ray`` would not be shut down, prefetch threads not stopped.
    Unwinding runs them; the run stays at its last commit either way.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    stop_like_ctrl_c()
    try:
        app()
    except UserError as e:  # normally handled in _Commands.invoke
        _error(str(e))
        sys.exit(2)
    except KeyboardInterrupt as e:
        err.print("interrupted: the run is at its last committed state", highlight=False)
        sys.exit(143 if isinstance(e, Terminated) else 130)


if __name__ == "__main__":
    main()
