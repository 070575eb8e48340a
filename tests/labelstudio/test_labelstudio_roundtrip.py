"""The whole loop against a real Label Studio server: alloop's tasks and labeling configuration go in,
annotators answer through the API (one skips a task, two annotate the same one), the project's
exports (JSON, JSON-MIN, CSV) come back into alloop.

The server runs from its own virtual environment (tests/labelstudio/setup.sh; ALLOOP_LABELSTUDIO_VENV
to use another), started on localhost by the fixture with a temporary data directory and a fresh
user and token. Without that environment these tests are skipped; `.ci/run` sets it up and runs them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

requests = pytest.importorskip("requests")

from cli_helpers import FAST, invoke, make_data  # noqa: E402

VENV = Path(os.environ.get("ALLOOP_LABELSTUDIO_VENV", Path(__file__).parent / ".venv"))
SERVER = VENV / "bin" / "label-studio"
pytestmark = [
    pytest.mark.labelstudio,
    # skipped without the server's environment, except where it is required (.ci/run's Label Studio step)
    pytest.mark.skipif(
        not SERVER.exists() and not os.environ.get("ALLOOP_LABELSTUDIO_REQUIRED"),
        reason=f"no Label Studio server environment at {VENV}: run tests/labelstudio/setup.sh",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def call(self, method: str, path: str, token: str | None = None, **kw):
        r = requests.request(
            method,
            self.url + path,
            headers={"Authorization": f"Token {token or self.token}"},
            timeout=120,
            **kw,
        )
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r

    def second_annotator(self, email: str, password: str) -> str:
        """A user who joins through the organization's invite link, as a colleague would; their API token."""
        invite = self.call("GET", "/api/invite").json()["token"]
        s = requests.Session()
        s.get(f"{self.url}/user/signup/?token={invite}", timeout=60)
        r = s.post(
            f"{self.url}/user/signup/?token={invite}",
            data={
                "email": email,
                "password": password,
                "csrfmiddlewaretoken": s.cookies.get("csrftoken"),
            },
            headers={"Referer": f"{self.url}/user/signup/"},
            allow_redirects=False,
            timeout=60,
        )
        assert r.status_code in (200, 302), r.text[:500]
        return s.get(f"{self.url}/api/current-user/token", timeout=60).json()["token"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("labelstudio-data")
    port, token = _free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(SERVER),
            "start",
            "--no-browser",
            "--port",
            str(port),
            "--host",
            f"http://localhost:{port}",
            "--data-dir",
            str(data / "app"),
            "--username",
            "lead@example.com",
            "--password",
            secrets.token_hex(8),
            "--user-token",
            token,
            "--enable-legacy-api-token",
            "--agree-fix-sqlite",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=data,
        start_new_session=True,
    )
    url = f"http://localhost:{port}"
    try:
        for _ in range(
            600
        ):  # migrations on first start take ~40 s on the 2-core machine; give it up to 10 minutes
            if proc.poll() is not None:
                break
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up, or busy migrating
                pass
            time.sleep(1)
        assert proc.poll() is None, (
            "Label Studio exited:\n" + (data / "server.log").read_text(errors="replace")[-3000:]
        )
        yield Server(url, token)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _labels(run: Path) -> pd.DataFrame:
    state = json.loads((run / "state.json").read_text())
    return pd.read_parquet(run / state["labels_file"]).set_index("id")


def test_round_trip_through_label_studio(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    d = make_data(tmp_path / "data")
    assert (
        invoke(
            ["init", "houses", "--pool", d.pool, "--test", d.test, "--labels", d.seed, *FAST], runs
        ).code
        == 0
    )
    q = invoke(["query", "houses", "-k", "6", "--format", "labelstudio", "--json"], runs)
    assert q.code == 0, q.stderr
    rec = q.json()
    tasks = json.loads(Path(rec["path"]).read_text())
    config = (runs / "houses" / rec["labeling_config"]).read_text()

    project = server.call(
        "POST", "/api/projects", json={"title": "alloop houses", "label_config": config}
    ).json()["id"]
    server.call("POST", f"/api/projects/{project}/import", json=tasks)
    listed = server.call(
        "GET", "/api/tasks", params={"project": project, "fields": "all", "page_size": 100}
    ).json()["tasks"]
    assert len(listed) == 6
    assert all(
        len(t["predictions"]) == 1 for t in listed
    )  # the pre-annotations were accepted by the project's config
    by_id = {t["data"]["alloop_id"]: t for t in listed}
    ranked = sorted(
        listed, key=lambda t: -t["predictions"][0]["score"]
    )  # Label Studio's sort by prediction score
    assert [t["data"]["alloop_id"] for t in ranked] == [t["data"]["alloop_id"] for t in tasks]

    colleague = server.second_annotator("colleague@example.com", secrets.token_hex(8))
    ids = [t["data"]["alloop_id"] for t in tasks]
    skipped, double = ids[0], ids[1]
    submitted = {}
    for id_ in ids:
        task_id = by_id[id_]["id"]
        if id_ == skipped:
            server.call(
                "POST",
                f"/api/tasks/{task_id}/annotations",
                json={"result": [], "was_cancelled": True},
            )
            continue
        value = round(float(d.truth.loc[id_]), 3)
        result = [
            {"from_name": "target", "to_name": "row", "type": "number", "value": {"number": value}}
        ]
        server.call(
            "POST",
            f"/api/tasks/{task_id}/annotations",
            json={"result": result, "was_cancelled": False},
        )
        submitted[id_] = value
        if id_ == double:
            other = value + 1.0
            result2 = [
                {
                    "from_name": "target",
                    "to_name": "row",
                    "type": "number",
                    "value": {"number": other},
                }
            ]
            server.call(
                "POST",
                f"/api/tasks/{task_id}/annotations",
                token=colleague,
                json={"result": result2, "was_cancelled": False},
            )
            submitted[id_] = (value + other) / 2  # --resolve mean

    exports = {}
    for kind, ext in (("JSON", "json"), ("JSON_MIN", "json"), ("CSV", "csv")):
        r = server.call(
            "GET",
            f"/api/projects/{project}/export",
            params={"exportType": kind, "download_all_tasks": "true"},
        )
        exports[kind] = tmp_path / f"export-{kind.lower()}.{ext}"
        exports[kind].write_bytes(r.content)
    full = json.loads(exports["JSON"].read_text())
    assert sum(len(t["annotations"]) for t in full) == 7  # 5 answers, a second one, and the skip

    before = runs / "before"
    shutil.copytree(runs / "houses", before)
    for kind, path in exports.items():
        run = runs / "houses"
        if kind != "JSON":  # each export into a fresh copy of the run as it was before ingesting
            shutil.rmtree(run)
            shutil.copytree(before, run)
        res = invoke(["ingest", "houses", path, "--resolve", "mean", "--no-train", "--json"], runs)
        assert res.code == 0, f"{kind}: {res.stderr}"
        out = res.json()
        # the full JSON export carries the skip, which returns the row to the pool (#32); JSON-MIN
        # and CSV leave cancelled annotations out, so there the row stays outstanding
        skip_seen = kind == "JSON"
        assert out["added"] == 5 and out["outstanding"] == 1 - skip_seen, (kind, out)
        assert any("disagreed on 1 task" in n for n in out["notes"]), (kind, out["notes"])
        labels = _labels(run)
        got = {i: float(labels.loc[i, "target"]) for i in submitted}
        assert got == pytest.approx(submitted, rel=1e-12, abs=1e-12), kind
        assert skipped not in labels.index
        state = json.loads((run / "state.json").read_text())
        assert (str(skipped) in state["outstanding"]) != skip_seen, kind
        said = [n for n in out["notes"] if "skipped" in n]
        assert len(said) == skip_seen, (kind, out["notes"])
        assert all(str(skipped) in n for n in said), (kind, out["notes"])

    latest = invoke(
        [
            "ingest",
            "houses",
            exports["JSON"],
            "--resolve",
            "latest",
            "--no-train",
            "--overwrite",
            "--json",
        ],
        runs,
    )
    assert latest.code == 0, latest.stderr
    assert float(_labels(runs / "houses").loc[double, "target"]) == pytest.approx(
        submitted[double] + 0.5
    )  # the colleague's, the later one
    assert np.isfinite(_labels(runs / "houses")["target"]).all()


def test_classification_round_trip(server, tmp_path, monkeypatch):
    """Choices: Label Studio accepts alloop's class configuration and pre-annotations; majority over annotators."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    wine = Path(__file__).resolve().parents[2] / "datasets" / "wine"
    truth = pd.read_parquet(wine / "pool.parquet").set_index("id")["target"]
    seed = pd.concat(
        [truth[truth == c].iloc[:2] for c in ("class_0", "class_1", "class_2")]
    ).reset_index()
    seed.to_csv(tmp_path / "seed.csv", index=False)
    assert (
        invoke(
            [
                "init",
                "wine",
                "--task",
                "classification",
                "--pool",
                wine / "pool.parquet",
                "--labels",
                tmp_path / "seed.csv",
                *FAST,
            ],
            runs,
        ).code
        == 0
    )
    rec = invoke(["query", "wine", "-k", "3", "--format", "labelstudio", "--json"], runs).json()
    tasks = json.loads(Path(rec["path"]).read_text())
    config = (runs / "wine" / rec["labeling_config"]).read_text()
    project = server.call(
        "POST", "/api/projects", json={"title": "alloop wine", "label_config": config}
    ).json()["id"]
    server.call("POST", f"/api/projects/{project}/import", json=tasks)
    listed = server.call("GET", "/api/tasks", params={"project": project, "fields": "all"}).json()[
        "tasks"
    ]
    assert all(
        t["predictions"][0]["result"][0]["value"]["choices"][0].startswith("class_") for t in listed
    )
    colleague = server.second_annotator("wine-colleague@example.com", secrets.token_hex(8))
    want = {}
    for t in listed:
        id_ = t["data"]["alloop_id"]
        true = str(truth.loc[id_])
        wrong = "class_0" if true != "class_0" else "class_1"
        for token, value in (
            (None, true),
            (colleague, wrong),
            (None, true),
        ):  # two of three say the truth
            result = [
                {
                    "from_name": "target",
                    "to_name": "row",
                    "type": "choices",
                    "value": {"choices": [value]},
                }
            ]
            server.call(
                "POST",
                f"/api/tasks/{t['id']}/annotations",
                token=token,
                json={"result": result, "was_cancelled": False},
            )
        want[id_] = true
    r = server.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON_MIN"})
    (tmp_path / "min.json").write_bytes(r.content)
    res = invoke(
        ["ingest", "wine", tmp_path / "min.json", "--resolve", "majority", "--no-train", "--json"],
        runs,
    )
    assert res.code == 0, res.stderr
    labels = _labels(runs / "wine")
    assert {i: labels.loc[i, "target"] for i in want} == want
