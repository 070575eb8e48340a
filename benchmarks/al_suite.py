"""The honest scoreboard: alloop's loop against random and the published state of the art, on a fixed
suite of real datasets (``benchmarks/suite``), in one protocol.

    python benchmarks/al_suite.py --quick     # alloop's strategies, 3 repetitions (what later work iterates against)
    python benchmarks/al_suite.py             # the full suite: 20 repetitions, every strategy and anchor (hours)
    python benchmarks/al_suite.py --report    # only rebuild docs/results.md's suite section and plots from what has run
    python benchmarks/al_suite.py --quick --task regression --no-anchors --strategies herding,sld,random --reps 10
    python benchmarks/al_suite.py --quick --task regression --no-anchors --model auto   # curves as herding@auto, random@auto

Protocol (the same for alloop and the anchors): repetition r starts from the pool rows
``default_rng([seed, r]).choice(n_pool, 10)`` (``benchmarks/anchors/protocol.py``, ``alloop simulate``'s
``initial_rows``), then batches of 10 up to 200 labels (``budget`` below for small pools), the test
metric after every batch. alloop runs ``alloop simulate`` (the live strategies, s as ``alloop init`` sets
it: auto for linear regression); the anchors run by their own code in their own environment
(``benchmarks/anchors``, made by its ``setup.sh``): bmdal-reg's methods on their 2×512 ReLU network, and
scikit-activeml's strategies on ridge (regression) or logistic regression (classification).
Every method is compared with the random sampling of its own model (paired by repetition), and with
every other by absolute test error.

Progress is printed per (dataset, method); every piece resumes after an interruption (finished curves
are kept in OUT/<dataset>/). Data are built on demand from installed packages (``benchmarks/suite/build.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "suite"))
import suite  # noqa: E402

ANCHOR_PY = HERE / "anchors" / ".venv" / "bin" / "python"
ANCHOR_RUN = HERE / "anchors" / "run_anchor.py"
RESULTS = ROOT / "docs" / "results.md"
PLOTS = ROOT / "docs" / "suite"
BEGIN, END = (
    "<!-- suite:begin (benchmarks/al_suite.py --report writes this part) -->",
    "<!-- suite:end -->",
)
INITIAL, BATCH, BUDGET, SEED = 10, 10, 200, 0
AT = (50, 100, 200)

MODES = {
    "quick": {
        "reps": 3,
        "alloop": {
            "regression": ("sld", "herding", "random"),
            "classification": ("margin", "sld", "herding", "random"),
        },
        "anchors": {"regression": (), "classification": ()},
    },
    "full": {
        "reps": 20,
        "alloop": {
            "regression": ("sld", "herding", "sld-topk", "random", "greedy", "committee", "igs"),
            "classification": ("margin", "sld", "herding", "entropy", "random", "greedy"),
        },
        "anchors": {
            "regression": (
                "bmdal-lcmd-tp",
                "bmdal-kmeanspp-p",
                "bmdal-maxdiag",
                "bmdal-bait",
                "bmdal-random",
                "skal-gsx",
                "skal-gsy",
                "skal-igs",
                "skal-qbc",
                "skal-emcm",
                "skal-emvr",
                "skal-random",
            ),
            "classification": (
                "skal-margin",
                "skal-entropy",
                "skal-badge",
                "skal-typiclust",
                "skal-random",
            ),
        },
    },
}
RANDOM_OF = {
    "alloop": "random",
    "bmdal": "bmdal-random",
    "skal": "skal-random",
}  # each method's own random baseline


def budget_of(meta: dict) -> int:
    """200 labels, or three quarters of a smaller pool (in whole batches)."""
    return int(min(BUDGET, (meta["n_pool"] * 3 // 4) // BATCH * BATCH))


def random_of(method: str) -> str:
    """A method's own random baseline: the same family and, for alloop, the same model (``herding@auto`` -> ``random@auto``)."""
    model = method[method.index("@") :] if "@" in method else ""
    return RANDOM_OF[family(method)] + model


def family(method: str) -> str:
    return method.split("-")[0] if method.split("-")[0] in ("bmdal", "skal") else "alloop"


# --- running ---------------------------------------------------------------------------------------


def run_alloop(
    name: str, meta: dict, strategies: tuple, reps: int, out: Path, model: str | None = None
) -> None:
    """``alloop simulate`` on one suite dataset: the live strategies, s as `alloop init` sets it, the linear model
    (curves in ``alloop/``) or another ``--model`` kind (curves kept apart in ``alloop-KIND/``, reported as ``strategy@KIND``)."""
    simulate_table(
        name,
        meta,
        strategies,
        reps,
        out / ("alloop" if model is None else f"alloop-{model}"),
        model or "linear",
    )


def simulate_table(
    name: str,
    meta: dict,
    strategies,
    reps: int,
    dest: Path,
    model: str = "linear",
    test: Path | None = None,
    jobs: int | None = None,
) -> None:
    """The suite's protocol (seed, initial labels, batches, budget) on one dataset, curves in ``dest``; ``test``
    replaces its test set (``suite_shift.py``), ``jobs=1`` keeps the curves in this process (``herding_bandwidth.py``)."""
    from alloop.sim import simulate as sim

    folder = suite.folder(name)
    sim.run_simulation(
        pool=str(folder / "pool.parquet"),
        test=str(test or folder / "test.parquet"),
        task=meta["task"],
        strategy_list=list(strategies),
        reps=reps,
        out=str(dest),
        budget=budget_of(meta),
        batch=BATCH,
        initial=INITIAL,
        seed=SEED,
        model={"kind": model},
        jobs=jobs,
    )


def run_anchor(name: str, meta: dict, method: str, reps: int, out: Path) -> None:
    """One anchor method by its own code, in its own environment (resumes by (method, rep))."""
    folder = suite.folder(name)
    cmd = [
        str(ANCHOR_PY),
        str(ANCHOR_RUN),
        "--pool",
        str(folder / "pool.parquet"),
        "--test",
        str(folder / "test.parquet"),
        "--meta",
        str(folder / "meta.json"),
        "--method",
        method,
        "--reps",
        str(reps),
        "--seed",
        str(SEED),
        "--initial",
        str(INITIAL),
        "--batch",
        str(BATCH),
        "--budget",
        str(budget_of(meta)),
        "--out",
        str(out / "anchors.csv"),
    ]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)


def run(
    mode: dict,
    names: list[str],
    out: Path,
    anchors: bool,
    alloop: bool = True,
    model: str | None = None,
) -> None:
    if anchors and not ANCHOR_PY.exists():
        sys.exit(
            f"no anchor environment at {ANCHOR_PY}: run benchmarks/anchors/setup.sh first (or pass --no-anchors)"
        )
    for name in names:
        meta = suite.build(name)
        task, where = meta["task"], out / name
        where.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if alloop and mode["alloop"][task]:
            print(
                f"{name} ({task}, {meta['n_pool']} pool rows): alloop {','.join(mode['alloop'][task])} ...",
                flush=True,
            )
            run_alloop(name, meta, mode["alloop"][task], mode["reps"], where, model)
        for method in mode["anchors"][task] if anchors else ():
            print(f"  {name}: {method} ...", flush=True)
            run_anchor(name, meta, method, mode["reps"], where)
        print(f"  {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)


# --- reading and summarizing -----------------------------------------------------------------------


def curves(name: str, out: Path) -> pd.DataFrame:
    """Every finished curve of a dataset: method, model, rep, n_labels, metric (RMSE or error rate)."""
    frames = []
    for folder in sorted(
        (out / name).glob("alloop*")
    ):  # alloop/ (the linear model), alloop-KIND/ (--model KIND)
        if not (folder / "curves.csv").exists():
            continue
        df = pd.read_csv(folder / "curves.csv")
        config = json.loads((folder / "config.json").read_text())
        model = config["settings"]["model"]["kind"] + (f" (s {config['settings']['s']})")
        suffix = "" if folder.name == "alloop" else "@" + folder.name.split("-", 1)[1]
        frames.append(
            pd.DataFrame(
                {
                    "method": df["strategy"] + suffix,
                    "model": f"alloop {model}",
                    "rep": df["rep"],
                    "n_labels": df["n_labels"],
                    "metric": df["metric"],
                }
            )
        )
    anchor_csv = out / name / "anchors.csv"
    if anchor_csv.exists():
        df = pd.read_csv(anchor_csv)
        metric = df["test_rmse"] if "test_rmse" in df else df["test_error"]
        frames.append(
            pd.DataFrame(
                {
                    "method": df["method"],
                    "model": df["model"],
                    "rep": df["rep"],
                    "n_labels": df["n_labels"],
                    "metric": metric,
                }
            )
        )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["method", "model", "rep", "n_labels", "metric"])
    )


def _area(g: pd.DataFrame) -> float:
    g = g.sort_values("n_labels")
    n, m = g["n_labels"].to_numpy(float), g["metric"].to_numpy(float)
    return float(np.sum(np.diff(n) * (m[1:] + m[:-1]) / 2))


def summarize(df: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per method: relative area to its own random (paired by rep: mean ratio of areas, s.e., wins–losses),
    and the mean test metric at 50, 100 and 200 labels (or the budget)."""
    rows = []
    complete = df.groupby(["method", "rep"])["n_labels"].transform("max") >= budget
    df = df[complete]
    areas = (
        df.groupby(["method", "rep"])
        .apply(_area, include_groups=False)
        .rename("area")
        .reset_index()
    )
    for method, g in df.groupby("method"):
        mine = areas[areas["method"] == method].set_index("rep")["area"]
        ref = areas[areas["method"] == random_of(method)].set_index("rep")["area"]
        both = mine.index.intersection(ref.index)
        ratio = (mine.loc[both] / ref.loc[both]).to_numpy()
        row = {
            "method": method,
            "model": g["model"].iloc[0],
            "reps": int(g["rep"].nunique()),
            "rel_area": float(mine.loc[both].mean() / ref.loc[both].mean())
            if len(both)
            else np.nan,
            "rel_se": float(ratio.std(ddof=1) / np.sqrt(len(ratio))) if len(ratio) > 1 else np.nan,
            "wins": int((ratio < 1).sum()),
            "losses": int((ratio > 1).sum()),
        }
        for k in AT:
            row[f"at{k}"] = float(g[g["n_labels"] == min(k, budget)]["metric"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def plot(name: str, df: pd.DataFrame, meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, g in sorted(df.groupby("method"), key=lambda t: (family(t[0]), t[0])):
        mean = g.groupby("n_labels")["metric"].mean()
        style = {"alloop": "-", "bmdal": "--", "skal": ":"}[family(method)]
        ax.plot(
            mean.index,
            mean.to_numpy(),
            style,
            lw=2.2 if method in ("sld", "margin") else 1.2,
            label=method,
        )
    ax.set_xlabel("labels")
    ax.set_ylabel("test RMSE" if meta["task"] == "regression" else "test error rate")
    ax.set_title(f"{name} ({meta['n_pool']} pool rows)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v, spec=".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def report(out: Path, names: list[str], seconds: dict | None = None) -> str:
    """The suite section of docs/results.md: per task a summary, then a table and a plot per dataset."""
    lines, overall = [], []
    for name in names:
        meta = suite.build(name)
        df = curves(name, out)
        if df.empty:
            continue
        budget = budget_of(meta)
        table = summarize(df, budget)
        table.insert(0, "dataset", name)
        table["task"] = meta["task"]
        overall.append(table)
        plot(name, df, meta, PLOTS / f"{name}.png")
    if not overall:
        return "No suite results yet: run `python benchmarks/al_suite.py --quick`."
    allt = pd.concat(overall, ignore_index=True)
    for task in ("regression", "classification"):
        t = allt[allt["task"] == task]
        if t.empty:
            continue
        metric = "test RMSE" if task == "regression" else "test error rate"
        lines += [
            f"### {task.capitalize()}: mean over {t['dataset'].nunique()} datasets",
            "",
            "Relative area: learning-curve area over the method's own random sampling (paired by repetition, below 1 is "
            "better); 'above 1.01' counts the datasets where the method lost to its own random by more than 1%.",
            "",
            "| method | model | mean relative area | datasets above 1.01 | wins–losses (all reps) |",
            "|---|---|---|---|---|",
        ]
        for method, g in sorted(t.groupby("method"), key=lambda kv: kv[1]["rel_area"].mean()):
            lines.append(
                f"| {method} | {g['model'].iloc[0]} | {_fmt(g['rel_area'].mean())} | {int((g['rel_area'] > 1.01).sum())} of {len(g)} "
                f"| {int(g['wins'].sum())}–{int(g['losses'].sum())} |"
            )
        from alloop import strategies

        default = strategies.default_for(task)
        kinds = sorted({m.split("@", 1)[1] for m in t["method"].unique() if "@" in m})
        others = [
            f"{strategies.default_for(task, kind)}@{kind}" for kind in kinds
        ]  # each other model with its own default
        for ours in [default, *(m for m in others if m in set(t["method"]))]:
            for anchor in ("bmdal-lcmd-tp", "skal-margin"):
                line = head_to_head(t, ours, anchor, task)
                if line:
                    lines += ["", "Absolute error: " + line]
        lines += stop_table(list(t["dataset"].unique()), out, task)
        lines.append("")
        for name in t["dataset"].unique():
            d = t[t["dataset"] == name].sort_values("rel_area")
            meta = suite.build(name)
            budget = budget_of(meta)
            cols = {
                min(k, budget): k for k in reversed(AT)
            }  # label count shown -> key: 50, 100, 200 (the budget of a small pool)
            at = sorted(cols)
            lines += [
                f"#### {name} ({meta['n_pool']} pool / {meta['n_test']} test rows, {len(meta['features'])} features, budget {budget})",
                "",
                "| method | model | reps | relative area ± s.e. | wins–losses | "
                + " | ".join(f"{metric} @{k}" for k in at)
                + " |",
                "|---|---|---|---|---|" + "---|" * len(at),
            ]
            for _, r in d.iterrows():
                lines.append(
                    f"| {r['method']} | {r['model']} | {r['reps']} | {_fmt(r['rel_area'])} ± {_fmt(r['rel_se'])} | {r['wins']}–{r['losses']} | "
                    + " | ".join(_fmt(r[f"at{cols[k]}"], ".4g") for k in at)
                    + " |"
                )
            lines += ["", f"![{name}](suite/{name}.png)", ""]
    return "\n".join(lines)


def head_to_head(t: pd.DataFrame, ours: str, theirs: str, task: str) -> str | None:
    """On how many datasets ``ours`` reaches a lower mean test metric than ``theirs`` at 50, 100 and 200 labels (absolute, own models)."""
    both = [
        d for d in t["dataset"].unique() if {ours, theirs} <= set(t[t["dataset"] == d]["method"])
    ]
    if not both:
        return None
    parts = []
    for k in AT:
        wins = sum(
            float(t[(t.dataset == d) & (t.method == ours)][f"at{k}"].iloc[0])
            < float(t[(t.dataset == d) & (t.method == theirs)][f"at{k}"].iloc[0])
            for d in both
        )
        parts.append(f"{wins} of {len(both)} at {k} labels")
    from alloop.config import default_model

    kind = ours.split("@", 1)[1] if "@" in ours else "linear"
    what = f"alloop's default strategy on --model {kind}" + (
        ": what `alloop init` runs unless told" if kind == default_model(task) else ""
    )
    return (
        f"`{ours}` ({what}) has a lower mean test error than `{theirs}` (its own model) on "
        + ", ".join(parts)
        + "."
    )


def stop_table(names: list[str], out: Path, task: str) -> list[str]:
    """The stopping rules replayed on the suite's curves (thresholds chosen on the bundled datasets: out of sample)."""
    from alloop import strategies
    from alloop.sim import summary as sim_summary
    from alloop.training import stopping

    default, rules = strategies.default_for(task), stopping.StopRules()
    rows = []
    for name in names:
        path = out / name / "alloop" / "curves.csv"
        if not path.exists() or suite.build(name)["task"] != task:
            continue
        df = pd.read_csv(path)
        if (
            "change" not in df
            or df[df.strategy == default][list(stopping.SIGNALS)].isna().all().all()
        ):
            continue
        recs = [
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in df[df.strategy == default].to_dict("records")
        ]
        figs = sim_summary.stop_summary(recs, default, task, rules)
        if figs:
            f = figs[stopping.PRIMARY[task]]
            rows.append(
                f"| {name} | {f['stopped']}/{f['reps']} | {f['labels']:.0f} | {f['labels_saved']:.0f} | "
                f"{sim_summary.given_up(f, task == 'classification')} |"
            )
    if not rows:
        return []
    return [
        "",
        f"Stopping on the suite (`{stopping.PRIMARY[task]}` with the thresholds chosen on the bundled datasets, so out of sample; "
        f"the default strategy `{default}`):",
        "",
        "| dataset | stopped before the budget | labels spent | labels saved | error given up (mean, worst) |",
        "|---|---|---|---|---|",
        *rows,
    ]


def write_report(text: str, path: Path = RESULTS) -> None:
    """Replace the suite section of ``path`` (appended the first time); the rest of the page stays as written."""
    body = path.read_text() if path.exists() else ""
    if BEGIN in body:
        body = body[: body.index(BEGIN)] + BEGIN + "\n" + text + "\n" + body[body.index(END) :]
    else:
        body = body.rstrip() + "\n\n" + BEGIN + "\n" + text + "\n" + END + "\n"
    path.write_text(body)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="alloop's default strategies (sld, herding; margin, sld, herding for classification) against random, 3 repetitions",
    )
    ap.add_argument("--reps", type=int, help="override the mode's repetitions")
    ap.add_argument("--datasets", help="comma-separated suite datasets (default: all)")
    ap.add_argument(
        "--task", choices=("regression", "classification"), help="only this task's datasets"
    )
    ap.add_argument("--no-anchors", action="store_true", help="run alloop only")
    ap.add_argument(
        "--no-alloop",
        action="store_true",
        help="run the anchors only (e.g. beside an alloop-only run on the same --out)",
    )
    ap.add_argument("--anchors", help="comma-separated anchor methods to run (default: the mode's)")
    ap.add_argument(
        "--model",
        help="alloop's model (e.g. auto; regression only), curves kept apart and reported as strategy@MODEL "
        "(default: linear, in alloop/; alloop init's default for regression is auto)",
    )
    ap.add_argument(
        "--strategies",
        help="comma-separated alloop strategies to run"
        " (each on the tasks it applies to, simulation-only ones included; default: the mode's live ones)",
    )
    ap.add_argument(
        "--report", action="store_true", help="only rebuild the report from what has run"
    )
    ap.add_argument("--doc", default=str(RESULTS), help="the page whose suite section is rewritten")
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "out" / "suite"),
        help="where curves are kept (resumable)",
    )
    args = ap.parse_args()
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.reps:
        mode["reps"] = args.reps
    if args.anchors:
        chosen = tuple(a.strip() for a in args.anchors.split(",") if a.strip())
        mode["anchors"] = {
            task: tuple(
                a
                for a in chosen
                if (a.startswith("bmdal") or a in MODES["full"]["anchors"][task])
                and a in MODES["full"]["anchors"][task]
            )
            for task in ("regression", "classification")
        }
    if args.strategies:
        from alloop import strategies

        chosen = [
            strategies.get(a.strip()).name for a in args.strategies.split(",") if a.strip()
        ]  # named: simulation-only ones too
        mode["alloop"] = {
            task: tuple(a for a in chosen if a in strategies.names(task))
            for task in ("regression", "classification")
        }
    names = (
        [n.strip() for n in args.datasets.split(",")] if args.datasets else suite.names(args.task)
    )
    out = Path(args.out)
    t0 = time.perf_counter()
    if not args.report:
        run(
            mode,
            names,
            out,
            anchors=not args.no_anchors,
            alloop=not args.no_alloop,
            model=args.model,
        )
        print(f"suite ran in {time.perf_counter() - t0:.0f} s", flush=True)
    write_report(report(out, suite.names()), Path(args.doc))
    print(f"wrote {args.doc} and {PLOTS}/", flush=True)


if __name__ == "__main__":
    main()
