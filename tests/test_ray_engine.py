"""``alloop query --engine ray`` on a local Ray cluster (2 CPUs, started once for the session) over pools held as
directories of Parquet files: the same query file as the local engine for every live strategy of both tasks, the
same file when an actor is killed mid-query (Ray restarts it and retries its files), the run unchanged when
the query fails; and pools in object storage (an S3 endpoint on localhost: moto's server mode) read by ``init``,
``query`` (local and Ray engines) and ``status``, with a missing bucket and bad credentials refused in one line."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import ray
from cli_helpers import FAST, assert_user_error, digest, fill, invoke
from s3_helpers import BUCKET, KEY, REGION, SECRET, put_pool

from alloop import strategies
from alloop.io import ray_cluster as ray_cluster_mod
from alloop.strategies import distributed

WINE = Path(__file__).resolve().parents[1] / "datasets" / "wine"


def ok(res, what=""):
    assert res.code == 0, f"{what} exit {res.code}\nstderr:\n{res.stderr}\nstdout:\n{res.stdout}"
    return res


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, aws_env):
    """A local Ray cluster with 2 CPUs for the whole session; yields the path whose creation arms one actor kill."""
    arm = tmp_path_factory.mktemp("ray-faults") / "kill-one-actor"
    env = {
        distributed.KILL_ENV: str(arm),
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "JAX_PLATFORMS": "cpu",
    }
    warnings.filterwarnings(
        "ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning
    )  # fork-and-exec of Ray's processes
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": env},
    )
    yield arm
    ray.shutdown()


def split_pool(df: pd.DataFrame, folder: Path, cuts=(0.4, 0.7)) -> Path:
    """The pool as a directory of three Parquet files (with small row groups)."""
    folder.mkdir(parents=True, exist_ok=True)
    edges = [0, *(int(c * len(df)) for c in cuts), len(df)]
    for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        df.iloc[a:b].to_parquet(folder / f"part-{j}.parquet", index=False, row_group_size=37)
    return folder


@pytest.fixture(scope="session")
def regression_run(alloop_data, tmp_path_factory):
    """A trained regression run over a pool directory, mid-cycle: labels and 2 outstanding rows (both left out)."""
    runs = tmp_path_factory.mktemp("ray-runs")
    pool = split_pool(pd.read_parquet(alloop_data.pool), runs / "pooldir")
    ok(
        invoke(
            [
                "init",
                "reg",
                "--pool",
                pool,
                "--test",
                alloop_data.test,
                "--labels",
                alloop_data.seed,
                *FAST,
            ],
            runs,
        ),
        "init",
    )
    q = ok(invoke(["query", "reg", "-k", "5", "--json"], runs), "query").json()
    ok(
        invoke(
            [
                "ingest",
                "reg",
                fill(q["path"], alloop_data.truth, out=runs / "r1.csv", leave_blank=2),
            ],
            runs,
        ),
        "ingest",
    )
    return runs / "reg"


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory):
    """A trained wine run (linear softmax) over a pool directory, 2 seed labels per class."""
    runs = tmp_path_factory.mktemp("ray-cls-runs")
    df = pd.read_parquet(WINE / "pool.parquet")
    pool = split_pool(df.drop(columns="target"), runs / "pooldir")
    truth = df.set_index("id")["target"]
    seed = pd.concat([truth[truth == c].iloc[:2] for c in sorted(truth.unique())]).reset_index()
    seed.to_csv(runs / "seed.csv", index=False)
    ok(
        invoke(
            [
                "init",
                "wine",
                "--task",
                "classification",
                "--pool",
                pool,
                "--test",
                WINE / "test.parquet",
                "--labels",
                runs / "seed.csv",
                *FAST,
            ],
            runs,
        ),
        "init",
    )
    ok(invoke(["train", "wine"], runs), "train")
    return runs / "wine"


def twins(src: Path, runs: Path) -> tuple[str, str]:
    shutil.copytree(src, runs / "local")
    shutil.copytree(src, runs / "onray")
    return "local", "onray"


def assert_same_query(runs: Path, a: dict, b: dict) -> None:
    """The same query file byte for byte, and the same committed state."""
    assert (a["round"], a["rows"], a["strategy"]) == (b["round"], b["rows"], b["strategy"])
    assert Path(a["path"]).name == Path(b["path"]).name
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    sa, sb = (json.loads((runs / n / "state.json").read_text()) for n in ("local", "onray"))
    assert {k: v for k, v in sa.items() if k != "queries"} == {
        k: v for k, v in sb.items() if k != "queries"
    }
    assert [q["sha256"] for q in sa["queries"]] == [q["sha256"] for q in sb["queries"]]


def query_both(runs: Path, *opts, ray_opts=("--workers", "1")) -> tuple[dict, dict]:
    a = ok(invoke(["query", "local", "--json", *opts], runs), "local query").json()
    b = ok(
        invoke(["query", "onray", "--json", "--engine", "ray", *ray_opts, *opts], runs), "ray query"
    ).json()
    return a, b


@pytest.mark.parametrize("strategy", strategies.names("regression", live=True))
def test_ray_query_equals_local_regression(ray_cluster, regression_run, runs, strategy):
    twins(regression_run, runs)
    a, b = query_both(runs, "-k", "6", "--strategy", strategy)
    assert a["strategy"] == strategy and b["engine"] == "ray"
    assert_same_query(runs, a, b)


@pytest.mark.parametrize("strategy", strategies.names("classification", live=True))
def test_ray_query_equals_local_classification(ray_cluster, classification_run, runs, strategy):
    twins(classification_run, runs)
    assert_same_query(runs, *query_both(runs, "-k", "5", "--strategy", strategy))


def test_two_actors_share_the_files_and_give_the_same_file(ray_cluster, regression_run, runs):
    """The pool's three files handed out to two actors (whichever is free takes the next): the same file as the local engine."""
    twins(regression_run, runs)
    a = ok(
        invoke(["query", "local", "--json", "-k", "6", "--strategy", "sld"], runs), "local query"
    ).json()
    b = ok(
        invoke(
            [
                "query",
                "onray",
                "--json",
                "--engine",
                "ray",
                "--workers",
                "2",
                "-k",
                "6",
                "--strategy",
                "sld",
            ],
            runs,
        ),
        "ray query",
    ).json()
    assert_same_query(runs, a, b)


def test_ray_query_at_cold_start_falls_back_like_local(ray_cluster, alloop_data, runs, tmp_path):
    pool = split_pool(pd.read_parquet(alloop_data.pool), tmp_path / "pooldir")
    ok(invoke(["init", "cold", "--pool", pool, *FAST], runs))
    twins(runs / "cold", runs)
    a, b = query_both(runs, "-k", "5", "--strategy", "sld")
    assert a["strategy"] == "greedy" and "cold start" in a["note"]
    assert_same_query(runs, a, b)


def test_a_failed_ray_query_leaves_the_run_unchanged(ray_cluster, alloop_data, runs, tmp_path):
    """A pool file that went bad after init (a NaN feature) fails the query on an actor: one line, exit 2, run byte-identical."""
    pool = split_pool(pd.read_parquet(alloop_data.pool), tmp_path / "pooldir")
    ok(invoke(["init", "r", "--pool", pool, "--labels", alloop_data.seed, *FAST], runs))
    ok(invoke(["train", "r"], runs))
    bad = pd.read_parquet(pool / "part-2.parquet")
    bad.loc[bad.index[5], "x1"] = np.nan
    bad.to_parquet(pool / "part-2.parquet", index=False)
    before = digest(runs / "r")
    assert_user_error(
        invoke(["query", "r", "--engine", "ray", "--strategy", "sld-topk"], runs),
        "non-finite value in feature 'x1'",
    )
    assert digest(runs / "r") == before


def test_ray_options_are_checked(runs, regression_run):
    shutil.copytree(regression_run, runs / "r")
    before = digest(runs / "r")
    assert_user_error(invoke(["query", "r", "--engine", "spark"], runs), "--engine")
    assert_user_error(invoke(["query", "r", "--address", "auto"], runs), "--engine ray")
    assert digest(runs / "r") == before


def test_without_ray_the_engine_says_how_to_install_it(runs, regression_run, monkeypatch):
    shutil.copytree(regression_run, runs / "r")
    before = digest(runs / "r")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert_user_error(invoke(["query", "r", "--engine", "ray"], runs), "pip install 'alloop[ray]'")
    assert digest(runs / "r") == before


# --- pools in object storage -----------------------------------------------------------------------


def test_init_and_query_over_s3_with_both_engines(ray_cluster, s3, alloop_data, runs):
    endpoint, client = s3
    df = pd.read_parquet(alloop_data.pool)
    put_pool(client, df, "houses")
    uri = f"s3://{BUCKET}/houses"
    init = ok(
        invoke(
            [
                "init",
                "s3run",
                "--pool",
                uri,
                "--endpoint-url",
                endpoint,
                "--labels",
                alloop_data.seed,
                *FAST,
                "--json",
            ],
            runs,
        )
    ).json()
    assert init["pool_rows"] == len(df)
    config = json.loads((runs / "s3run" / "config.json").read_text())
    assert config["pool"]["path"].startswith(
        uri + "?"
    )  # the endpoint goes with the URI; credentials never do
    ok(invoke(["train", "s3run"], runs))
    twins(runs / "s3run", runs)
    a, b = query_both(runs, "-k", "6", "--strategy", "sld")
    assert_same_query(runs, a, b)
    assert set(pd.read_csv(a["path"])["id"]) <= set(df["id"])
    status = ok(invoke(["status", "local", "--json"], runs)).json()
    assert status["pool"].startswith(uri) and status["outstanding"] == 6


def test_aws_endpoint_url_from_the_environment(s3, alloop_data, runs, monkeypatch):
    endpoint, client = s3
    put_pool(client, pd.read_parquet(alloop_data.pool), "env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    ok(invoke(["init", "e", "--pool", f"s3://{BUCKET}/env", *FAST], runs))
    ok(invoke(["query", "e", "-k", "3"], runs))


def test_a_missing_bucket_is_one_line(s3, runs):
    endpoint, _ = s3
    assert_user_error(
        invoke(
            ["init", "m", "--pool", "s3://no-such-bucket/pool", "--endpoint-url", endpoint], runs
        ),
        "s3://no-such-bucket/pool",
        "bucket does not exist",
    )
    assert not (runs / "m").exists()


def test_a_missing_prefix_is_one_line(s3, runs):
    endpoint, _ = s3
    assert_user_error(
        invoke(
            ["init", "m", "--pool", f"s3://{BUCKET}/nothing-here", "--endpoint-url", endpoint], runs
        ),
        "not found",
    )


def test_bad_credentials_are_one_line_and_leave_the_run_unchanged(
    s3, alloop_data, runs, monkeypatch
):
    from moto import settings
    from moto.core import responses

    endpoint, client = s3
    put_pool(client, pd.read_parquet(alloop_data.pool), "creds")
    ok(
        invoke(
            ["init", "c", "--pool", f"s3://{BUCKET}/creds", "--endpoint-url", endpoint, *FAST], runs
        )
    )
    before = digest(runs / "c")
    monkeypatch.setattr(
        settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0
    )  # the endpoint now checks access keys
    monkeypatch.setattr(responses.ActionAuthenticatorMixin, "request_count", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY")
    assert_user_error(invoke(["query", "c", "-k", "3"], runs), "access denied")
    assert_user_error(
        invoke(["init", "c2", "--pool", f"s3://{BUCKET}/creds", "--endpoint-url", endpoint], runs),
        "access denied",
    )
    assert digest(runs / "c") == before and not (runs / "c2").exists()


def test_an_unreachable_endpoint_is_one_line(runs):
    assert_user_error(
        invoke(
            ["init", "u", "--pool", "s3://pools/x", "--endpoint-url", "http://127.0.0.1:9"], runs
        ),
        "unreachable",
    )


def test_endpoint_url_is_for_s3_only(runs, alloop_data):
    assert_user_error(
        invoke(["init", "x", "--pool", "gs://b/p", "--endpoint-url", "http://127.0.0.1:9"], runs),
        "s3:// pools only",
    )


# --- actors kept between queries (--keep-workers) ----------------------------------------------------


def kept_actors() -> list[str]:
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == ray_cluster_mod.NAMESPACE
    )


def actor_state(name: str) -> dict:
    return ray.get(ray.get_actor(name, namespace=ray_cluster_mod.NAMESPACE).state.remote())


def wait_for(predicate, seconds: float = 60.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def test_kept_actors_serve_the_next_queries_and_give_the_same_files(
    ray_cluster, regression_run, classification_run, runs
):
    """--keep-workers: the second query on the cluster runs on the actor the first one started (same process, no new start)
    and still gives the local engine's file; a run of another model and features gets actors of its own."""
    twins(regression_run, runs)
    keep = ["--workers", "1", "--keep-workers", "600"]
    try:
        assert_same_query(runs, *query_both(runs, "-k", "6", "--strategy", "sld", ray_opts=keep))
        (name,) = kept_actors()
        first = actor_state(name)
        assert first["queries"] == 1
        assert_same_query(
            runs, *query_both(runs, "-k", "4", "--strategy", "sld-topk", ray_opts=keep)
        )  # round 2: other rows left out
        assert kept_actors() == [name]
        again = actor_state(name)
        assert again["pid"] == first["pid"] and again["queries"] == 2
        shutil.copytree(classification_run, runs / "wine")
        ok(invoke(["query", "wine", "-k", "3", "--engine", "ray", *keep], runs))
        assert (
            len(kept_actors()) == 2 and actor_state(name)["queries"] == 2
        )  # not reused for another model
        assert ok(invoke(["release-workers", "--json"], runs)).json() == {"released": 2}
        assert wait_for(lambda: kept_actors() == [])
    finally:
        ray_cluster_mod.release(ray)


def test_a_kept_actor_leaves_when_idle(ray_cluster, regression_run, runs):
    shutil.copytree(regression_run, runs / "r")
    try:
        ok(
            invoke(
                [
                    "query",
                    "r",
                    "-k",
                    "3",
                    "--engine",
                    "ray",
                    "--workers",
                    "1",
                    "--keep-workers",
                    "1",
                ],
                runs,
            )
        )
        assert wait_for(lambda: kept_actors() == [])
    finally:
        ray_cluster_mod.release(ray)


def test_a_kept_actor_is_never_idle_while_it_serves_a_file(monkeypatch):
    """The idle clock of --keep-workers stops while a file is served: a file that takes longer than the idle time
    (a slow disk, a busy machine) must not make the actor leave mid-query, which Ray reports as a dead actor."""
    from alloop.strategies import distributed

    scorer = object.__new__(distributed.Scorer)  # the actor's state without Ray
    scorer.last, scorer.busy = time.monotonic() - 100.0, False
    assert scorer.idle_for(1.0)
    during = []
    monkeypatch.setattr(
        distributed.Scorer,
        "_top",
        lambda self, files, token, box: during.append(self.idle_for(1.0)) or "rows",
    )
    assert scorer.top(("f",), "t", []) == "rows" and during == [False]
    assert (
        not scorer.idle_for(1.0) and scorer.idle_for(-1.0) and not scorer.busy
    )  # the clock restarts when the file is done
    monkeypatch.setattr(distributed.Scorer, "_top", lambda self, files, token, box: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        scorer.top(("f",), "t", [])
    assert not scorer.busy  # a failed file leaves the actor idle-able


def test_what_a_kept_actor_may_be_reused_for(regression_run, monkeypatch):
    """The key of kept actors: the same for the same code, model and features; another for another model, other features or changed code."""
    from alloop.commands.query import RoundRecipe

    config = json.loads((regression_run / "config.json").read_text())
    info = SimpleNamespace(features=("x0", "x1", "x2"))
    recipe = lambda cfg: RoundRecipe(cfg, "regression", np.zeros((1, 3)), np.zeros((1, 1)), 0, 64)
    key = distributed.actor_key(recipe(config), info)
    assert distributed.actor_key(recipe(json.loads(json.dumps(config))), info) == key
    assert (
        distributed.actor_key(recipe({**config, "model": {**config["model"], "kind": "mlp"}}), info)
        != key
    )
    assert distributed.actor_key(recipe(config), SimpleNamespace(features=("x0", "x1"))) != key
    monkeypatch.setattr(distributed, "_CODE", "other-code")
    assert distributed.actor_key(recipe(config), info) != key


def test_keep_workers_needs_ray_and_a_number(runs, regression_run):
    shutil.copytree(regression_run, runs / "r")
    before = digest(runs / "r")
    assert_user_error(invoke(["query", "r", "--keep-workers", "60"], runs), "--engine ray")
    assert_user_error(
        invoke(["query", "r", "--engine", "ray", "--keep-workers", "-1"], runs), "--keep-workers"
    )
    assert digest(runs / "r") == before


# --- actors that die -------------------------------------------------------------------------------


def test_an_actor_that_always_dies_fails_the_query_in_one_line(ray_cluster, regression_run, runs):
    """Every actor dies at every file: after Ray's restarts the query fails with one line, exit 2, the run unchanged."""
    shutil.copytree(regression_run, runs / "r")
    before = digest(runs / "r")
    ray_cluster.write_text("always")
    try:
        res = invoke(["query", "r", "-k", "3", "--engine", "ray", "--workers", "1"], runs)
    finally:
        ray_cluster.unlink()
    assert_user_error(res, "scoring actor died", "run is unchanged")
    assert digest(runs / "r") == before


# last: Ray reports the dead worker asynchronously
def test_a_killed_actor_still_gives_the_same_file(ray_cluster, regression_run, runs):
    """One actor SIGKILLs itself at its first file: Ray restarts it and retries the file; the file is the same, and the
    user reads one note of it, not Ray's notices and tracebacks."""
    twins(regression_run, runs)
    ray_cluster.write_text("armed")
    a = ok(
        invoke(["query", "local", "--json", "-k", "6", "--strategy", "sld-topk"], runs),
        "local query",
    ).json()
    res = ok(
        invoke(
            [
                "query",
                "onray",
                "--json",
                "--engine",
                "ray",
                "--workers",
                "1",
                "-k",
                "6",
                "--strategy",
                "sld-topk",
            ],
            runs,
        ),
        "ray query",
    )
    assert (
        not ray_cluster.exists() and ray_cluster.with_name(ray_cluster.name + ".fired").exists()
    )  # the kill happened
    ray_cluster.with_name(ray_cluster.name + ".fired").unlink()
    assert_same_query(runs, a, res.json())
    notes = [ln for ln in res.stderr.splitlines() if "Ray" in ln]
    assert len(notes) == 1 and "died during the query and Ray restarted" in notes[0], res.stderr
    assert "Traceback" not in res.stderr and "(raylet)" not in res.stderr
