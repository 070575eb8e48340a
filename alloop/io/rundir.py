"""The run directory: layout, the state.json commit point, labels, checkpoints, history.

Layout (human-readable on purpose)::

    runs/NAME/
      config.json                     what init was given (written once)
      state.json                      THE commit point: generation, round, file names + sha256s
      labels/labels-NNNNNN.parquet    all labels so far: id, target(s), round, time
      checkpoints/ckpt-NNNNNN.npz     model + optimizer state (see checkpoint.py)
      queries/round-NNNN.<fmt>        what each query round asked the user to label
      history.jsonl                   one JSON object per command
      .lock                           see lock.py

Every change goes through ``commit``: new files are written under new names first, then
state.json is replaced atomically, then files it no longer names are deleted (the previous
generation's labels and checkpoint are kept). A kill at any instant leaves state.json naming a
complete earlier or later state; files it does not name are leftovers the next commit removes.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from alloop.config import AUTO, AUTO_CANDIDATES, ModelSpec
from alloop.errors import UserError
from alloop.io.atomic import (
    encode_json,
    encode_table,
    sha256_bytes,
    sha256_file,
    to_json_value,
    write_bytes_atomic,
    write_json_atomic,
)
from alloop.io.checkpoint import decode_meta, decode_tree, encode_tree
from alloop.io.lock import LOCK_NAME

RUNS_ENV = "ALLOOP_RUNS"
CONFIG = "config.json"
STATE = "state.json"
HISTORY = "history.jsonl"
SUBDIRS = ("labels", "checkpoints", "queries")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL_FILE = re.compile(r"labels-\d+\.parquet")
_CKPT_FILE = re.compile(r"ckpt-\d+\.npz")


@dataclass
class Run:
    """An opened run: where it is, what it was created with, and its committed state."""

    path: Path
    name: str
    config: dict
    state: dict

    @property
    def generation(self) -> int:
        return int(self.state["generation"])

    @property
    def round(self) -> int:
        return int(self.state["round"])

    @property
    def n_labels(self) -> int:
        return int(self.state.get("n_labels", 0))

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.config.get("targets", ()))

    @property
    def id_kind(self) -> str:
        return self.config.get("id_kind", "int")

    @property
    def task(self) -> str:
        return self.config.get("task", "regression")

    @property
    def outstanding(self) -> dict:
        """Queried ids not labeled yet, as stored: {id as str: round asked}."""
        return self.state.get("outstanding", {})

    @property
    def outstanding_ids(self) -> np.ndarray:
        """The outstanding ids converted to the pool's id kind (int64 or str objects)."""
        keys = list(self.outstanding)
        if self.id_kind == "int":
            return np.array([int(k) for k in keys], dtype=np.int64)
        return np.array(keys, dtype=object)

    @property
    def labels_path(self) -> Path | None:
        return self._file("labels_file")

    @property
    def checkpoint_path(self) -> Path | None:
        return self._file("checkpoint")

    def _file(self, key: str) -> Path | None:
        rel = self.state.get(key)
        return self.path / rel if rel else None


def runs_root() -> Path:
    """Where plain run names live: $ALLOOP_RUNS, else ./runs (absolute)."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser().resolve()


def resolve_run_path(name: str) -> Path:
    """A plain name maps to runs_root()/name; anything path-like (``/``, ``.``, ``~``) is a path."""
    if not name or not name.strip():
        raise UserError("the run name is empty: pass a name like 'exp1' or a path like ./runs/exp1")
    if _is_path_like(name):
        return Path(name).expanduser().resolve()
    if not _NAME.fullmatch(name):
        raise UserError(
            f"run name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit), or pass a path like ./runs/NAME"
        )
    return runs_root() / name


def _is_path_like(name: str) -> bool:
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return any(s in name for s in seps) or name.startswith((".", "~"))


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (as users typed it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def initial_state() -> dict:
    """The state of a run nobody has labeled, trained or queried yet."""
    return {
        "generation": 0,
        "round": 0,
        "labels_file": None,
        "labels_sha256": None,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "outstanding": {},
        "n_labels": 0,
        "labels_at_checkpoint": 0,
        "queries": [],
    }


def create_run(path: Path, config: dict, state_extra: dict | None = None) -> Run:
    """Create a run at ``path`` all at once: built in a hidden sibling, then renamed into place.

    ``path`` may be absent or an empty directory. On failure nothing it created is left behind.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise UserError(
            f"run '{path.name}' already exists at {_shown(path)}: pick another name or delete it"
        )
    state = {**initial_state(), **(state_extra or {})}
    made = _make_parents(path.parent)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        _build_run_dir(tmp, config, state)
        os.rename(tmp, path)  # atomic; replaces an empty directory, fails on a non-empty one
    except OSError as e:
        _undo_create(tmp, made)
        if path.exists() and any(path.iterdir()):
            raise UserError(
                f"run '{path.name}' already exists at {_shown(path)}: pick another name or delete it"
            ) from None
        raise UserError(
            f"cannot create run '{path.name}' at {_shown(path)} ({e.strerror or e}): check the directory's permissions"
        ) from None
    except BaseException:
        _undo_create(tmp, made)
        raise
    return Run(path, path.name, config, state)


def _make_parents(parent: Path) -> list[Path]:
    """mkdir -p that returns the directories it created (deepest last), for cleanup."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return list(reversed(missing))


def _build_run_dir(tmp: Path, config: dict, state: dict) -> None:
    tmp.mkdir()
    for sub in SUBDIRS:
        (tmp / sub).mkdir()
    write_json_atomic(tmp / CONFIG, config)
    write_json_atomic(tmp / STATE, state)


def _undo_create(tmp: Path, made: list[Path]) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            pass


def open_run(name_or_path: str) -> Run:
    """Open an existing run by name or path; UserError when it is missing or unreadable."""
    path = resolve_run_path(name_or_path)
    if not path.is_dir():
        near = [] if _is_path_like(name_or_path) else close_names(name_or_path)
        if near:
            raise UserError(
                f"no run named '{name_or_path}' (looked in {_shown(path)}): did you mean "
                f"'{near[0]}'? (`alloop runs` lists them)"
            )
        raise UserError(
            f"no run named '{name_or_path}' (looked in {_shown(path)}): "
            f"create it with `alloop init {name_or_path} --pool PATH`"
        )
    config = _read_json(path, CONFIG)
    state = _read_json(path, STATE)
    if not isinstance(state.get("generation"), int):
        raise UserError(
            f"run '{path.name}' has a state.json without a generation: restore it from a backup or init a new run"
        )
    return Run(path, path.name, effective_config(config, state), state)


def run_names() -> list[str]:
    """The directories under ``runs_root()`` that hold a state.json, sorted."""
    root = runs_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / STATE).is_file())


def close_names(name: str) -> list[str]:
    """Run names that look like a mistyping of ``name``, closest first."""
    import difflib

    return difflib.get_close_matches(name, run_names(), n=3, cutoff=0.6)


def effective_config(config: dict, state: dict) -> dict:
    """config.json as init wrote it, with the class list from state.json once ``--add-class`` grew it, and
    for ``--model auto`` the model chosen at the last training (marked ``"auto": true``).

    Both live in state.json so that they change in the same commit as the labels or checkpoint that need them.
    """
    out = {**config, "classes": state["classes"]} if state.get("classes") else config
    if ModelSpec.from_json(
        config.get("model") or {}
    ).is_auto:  # before the first training: the first candidate
        out = {**out, "model": {**(state.get("model") or AUTO_CANDIDATES[0]), AUTO: True}}
    return out


def _read_json(path: Path, name: str) -> dict:
    f = path / name
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"'{_shown(path)}' is not an alloop run (no {name}): pass the name of a run made by `alloop init`"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"run '{path.name}' has an unreadable {name} ({_first_line(e)}): restore it from a backup or init a new run"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"run '{path.name}' has a {name} that is not a JSON object: restore it from a backup or init a new run"
        )
    return obj


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def label_columns(run: Run) -> list[str]:
    """The columns of a labels file: id, the target(s), round, time."""
    return ["id", *run.targets, "round", "time"]


def read_labels(run: Run) -> pd.DataFrame:
    """All labels of the run (hash-checked), or an empty frame with the right columns and dtypes."""
    if run.labels_path is None:
        return _empty_labels(run)
    data = _read_checked(run, run.labels_path, run.state.get("labels_sha256"), "labels file")
    try:
        return pq.read_table(pa.BufferReader(data)).to_pandas()
    except (pa.ArrowException, OSError, ValueError):
        raise _corrupt(run, run.labels_path, "labels file") from None


def _empty_labels(run: Run) -> pd.DataFrame:
    target = np.float64 if run.task == "regression" else object
    cols = {"id": np.array([], dtype=np.int64 if run.id_kind == "int" else object)}
    cols.update({t: np.array([], dtype=target) for t in run.targets})
    cols.update(round=np.array([], dtype=np.int64), time=np.array([], dtype=object))
    return pd.DataFrame(cols)


def _read_checked(run: Run, path: Path, expected: str | None, what: str) -> bytes:
    """A referenced file's bytes, after checking they hash to what state.json recorded."""
    try:
        data = path.read_bytes()
    except OSError:
        raise _corrupt(run, path, what, "missing") from None
    if expected is not None and sha256_bytes(data) != expected:
        raise _corrupt(run, path, what)
    return data


def _corrupt(run: Run, path: Path, what: str, how: str = "corrupt") -> UserError:
    rel = path.relative_to(run.path) if path.is_relative_to(run.path) else path
    return UserError(f"{what} {rel} of run '{run.name}' is {how}: run `alloop verify {run.name}`")


def load_checkpoint(run: Run, like):
    """(tree, meta) of the committed checkpoint, or None if there is none yet; hash-checked."""
    path = run.checkpoint_path
    if path is None:
        return None
    data = _read_checked(run, path, run.state.get("checkpoint_sha256"), "checkpoint")
    return decode_tree(data, like, path, run.name), decode_meta(data, path)


def commit(
    run: Run,
    *,
    labels: pd.DataFrame | None = None,
    checkpoint: tuple | None = None,
    query: tuple | None = None,
    state: dict | None = None,
) -> Run:
    """Write the given new files, then state.json (the commit point), then drop stale files.

    ``labels`` is the full label table (columns id, targets, round, time); ``checkpoint`` is
    ``(tree, meta)``; ``query`` is ``(frame, fmt)`` and is saved as queries/round-RRRR.fmt for the
    round in the merged state. ``state`` is merged into the state first; ``n_labels`` follows
    ``labels`` and ``labels_at_checkpoint`` defaults to ``n_labels`` when a checkpoint is given.
    If anything fails before state.json is replaced, the new files are removed and the run is
    exactly as it was. The caller holds ``run_lock``.
    """
    new = copy.deepcopy(run.state)
    new.update(state or {})
    new["generation"] = gen = run.generation + 1
    written: list[Path] = []
    try:
        _write_labels(run, new, labels, gen, written)
        _write_checkpoint(run, new, checkpoint, gen, written, explicit=state or {})
        _write_query(run, new, query, written)
        write_bytes_atomic(run.path / STATE, encode_json(new).encode("utf-8"))
    except BaseException:
        if not _committed(run.path, gen):
            for f in written:
                f.unlink(missing_ok=True)
        raise
    _collect_garbage(run.path, new, run.state)
    return Run(run.path, run.name, effective_config(run.config, new), new)


def _committed(run_path: Path, gen: int) -> bool:
    """Whether state.json on disk is already generation ``gen`` (interrupted after the replace)."""
    try:
        return json.loads((run_path / STATE).read_text(encoding="utf-8")).get("generation") == gen
    except (OSError, ValueError, AttributeError):
        return False


def _write_new(run: Run, rel: str, data: bytes, written: list[Path]) -> str:
    write_bytes_atomic(run.path / rel, data)
    written.append(run.path / rel)
    return sha256_bytes(data)


def _write_labels(run: Run, new: dict, labels, gen: int, written: list) -> None:
    if labels is None:
        return
    missing = [c for c in label_columns(run) if c not in labels.columns]
    if missing:
        raise ValueError(f"labels frame lacks columns {missing}")
    rel = f"labels/labels-{gen:06d}.parquet"
    _remember_previous(run.state, new, "labels_file", "labels_sha256")
    new["labels_sha256"] = _write_new(run, rel, encode_table(labels, "parquet"), written)
    new["labels_file"], new["n_labels"] = rel, len(labels)


def _write_checkpoint(
    run: Run, new: dict, checkpoint, gen: int, written: list, explicit: dict
) -> None:
    if checkpoint is None:
        return
    tree, meta = checkpoint
    rel = f"checkpoints/ckpt-{gen:06d}.npz"
    _remember_previous(run.state, new, "checkpoint", "checkpoint_sha256")
    new["checkpoint_sha256"] = _write_new(run, rel, encode_tree(tree, meta), written)
    new["checkpoint"] = rel
    if "labels_at_checkpoint" not in explicit:
        new["labels_at_checkpoint"] = new.get("n_labels", 0)


def _remember_previous(old: dict, new: dict, file_key: str, sha_key: str) -> None:
    """Keep the file being replaced (and its hash) as ``previous`` in the state: `verify --repair` falls back to it."""
    if old.get(file_key):
        new.setdefault("previous", {})
        new["previous"] = {**new["previous"], file_key: old[file_key], sha_key: old.get(sha_key)}


def _write_query(run: Run, new: dict, query, written: list) -> None:
    """Save the query file for the merged state's round; refuses to replace a committed one.

    ``query`` is ``(frame, fmt)``, or ``(bytes, extension, {key: (extension, bytes)})`` for a file
    encoded by the caller with companion files (Label Studio's tasks and labeling configuration),
    each saved as queries/round-RRRR.<extension> and named in the query's entry under its key.
    """
    if query is None:
        return
    data, fmt, *rest = query
    rnd = int(new["round"])
    rel = f"queries/round-{rnd:04d}.{fmt}"
    if any(q.get("file") == rel for q in run.state.get("queries", [])):
        raise ValueError(f"{rel} is already committed; set state['round'] to a new round")
    sha = _write_new(
        run, rel, data if isinstance(data, bytes) else encode_table(data, fmt), written
    )
    entry = {"round": rnd, "file": rel, "sha256": sha, "time": _now()}
    for key, (ext, blob) in (rest[0] if rest else {}).items():
        entry[key] = f"queries/round-{rnd:04d}.{ext}"
        entry[f"{key}_sha256"] = _write_new(run, entry[key], blob, written)
    new["queries"] = [*new.get("queries", []), entry]


def _collect_garbage(run_path: Path, new: dict, old: dict) -> None:
    """Delete labels/checkpoints/queries that neither the new nor the previous state names, and temp files."""
    prev = new.get("previous", {})
    keep = {
        new.get("labels_file"),
        new.get("checkpoint"),
        old.get("labels_file"),
        old.get("checkpoint"),
        prev.get("labels_file"),
        prev.get("checkpoint"),
    }
    keep |= {q.get("file") for q in new.get("queries", [])} | {
        q.get("config") for q in new.get("queries", [])
    }
    for sub, pattern in (("labels", _LABEL_FILE), ("checkpoints", _CKPT_FILE), ("queries", None)):
        for f in (run_path / sub).glob("*"):
            rel = f"{sub}/{f.name}"
            stale = pattern.fullmatch(f.name) if pattern else f.name.startswith("round-")
            if (stale or f.name.startswith(".tmp-")) and rel not in keep:
                f.unlink(missing_ok=True)
    for f in run_path.glob(".tmp-*"):
        f.unlink(missing_ok=True)


def append_history(run: Run, record: dict) -> None:
    """Append one JSON line (with "time") to history.jsonl and fsync it; NaN figures become null."""
    line = json.dumps(to_json_value({"time": _now(), **record}), allow_nan=False) + "\n"
    path = run.path / HISTORY
    with open(path, "ab") as f:
        if f.tell() and not _ends_with_newline(path):
            line = "\n" + line  # a torn last line stays on its own line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _now() -> str:
    return (
        datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def asked_times(run: Run) -> dict[int, str]:
    """{query round: when it was asked (ISO UTC)}: the query's state entry, else its history line.

    Runs made before query entries carried a time have it only in history.jsonl.
    """
    times = {
        int(r["round"]): str(r["time"])
        for r in read_history(run)
        if r.get("command") == "query" and "round" in r and "time" in r
    }
    for q in run.state.get("queries", []):
        if q.get("time"):
            times[int(q["round"])] = str(q["time"])
    return times


def read_history(run: Run) -> list[dict]:
    """The history records in order; a line that does not parse (a torn write) is skipped."""
    path = run.path / HISTORY
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def run_files_digest(run_path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in the run except the lock."""
    run_path = Path(run_path)
    return {
        f.relative_to(run_path).as_posix(): sha256_file(f)
        for f in sorted(run_path.rglob("*"))
        if f.is_file() and f.name != LOCK_NAME
    }
