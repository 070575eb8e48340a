"""``alloop withdraw``: hand outstanding rows back to the pool, so a later query may ask them again.

A query makes its rows outstanding (asked, not answered); nothing else ever returns them.
Withdrawing takes them out of the outstanding set in one commit under the run lock; the query file
stays in the run as the record of what was asked. ``expired`` is the same choice by age, which
``query --reask-after DAYS`` applies before it picks.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from alloop.errors import UserError
from alloop.io import labels as labelio
from alloop.io import rundir
from alloop.io.lock import run_lock


@dataclass(frozen=True)
class Withdrawal:
    """Which outstanding rows go back: those of some query rounds, some ids, or all of them."""

    rounds: tuple[int, ...] = ()
    ids: tuple = ()
    everything: bool = False

    def check(self) -> None:
        given = sum([bool(self.rounds), bool(self.ids), self.everything])
        if given != 1:
            raise UserError(
                "withdraw takes exactly one of --round N, --ids FILE or --all: "
                "say which rows go back"
            )


def withdraw(
    name: str,
    *,
    rounds: tuple[int, ...] = (),
    ids: tuple = (),
    ids_file: str | None = None,
    id_col: str | None = None,
    everything: bool = False,
    wait: float = 5.0,
) -> dict:
    """Return outstanding rows to the pool; the record of what went back (also in history.jsonl).

    ``ids_file``: a CSV/Parquet/JSONL file with an id column (``id_col``, default the run's), or a
    text file of one id per line.
    """
    run = rundir.open_run(name)
    with run_lock(run.path, wait):
        run = rundir.open_run(str(run.path))
        if ids_file is not None:
            ids = (*ids, *read_ids(run, ids_file, id_col))
        w = Withdrawal(tuple(rounds), tuple(ids), everything)
        w.check()
        keys = chosen(run.outstanding, w)
        return commit_withdrawal(run, keys, "withdraw")


def read_ids(run: rundir.Run, path: str, id_col: str | None = None) -> list:
    """The ids listed in a file, parsed as the pool's ids."""
    col = id_col or run.config["pool"]["id_col"]
    return list(labelio.read_id_file(path, col, run.id_kind))


def chosen(outstanding: dict, w: Withdrawal) -> list[str]:
    """The outstanding keys (ids as stored) that ``w`` names; a named round or id that is not
    outstanding is a user error, so nothing the user asked for is skipped without a word."""
    if w.everything:
        return list(outstanding)
    if w.rounds:
        return _of_rounds(outstanding, w.rounds)
    keys = [str(i) for i in w.ids]
    missing = [k for k in keys if k not in outstanding]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"id {missing[0]}{more} is not outstanding (labeled, withdrawn or never asked): "
            "list only ids of `alloop status`'s outstanding rows"
        )
    return list(dict.fromkeys(keys))


def _of_rounds(outstanding: dict, rounds: tuple[int, ...]) -> list[str]:
    have = sorted(set(outstanding.values()))
    for r in rounds:
        if r not in have:
            where = ", ".join(map(str, have)) or "none"
            raise UserError(
                f"round {r} has no outstanding rows (rounds with some: {where}): "
                "pass one of those, or --all"
            )
    return [k for k, r in outstanding.items() if r in rounds]


def expired(run: rundir.Run, days: float, now: datetime.datetime | None = None) -> list[str]:
    """Outstanding keys whose query was asked more than ``days`` ago (``query --reask-after``)."""
    if not days >= 0:
        raise UserError("--reask-after is a number of days, 0 or more")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    asked = rundir.asked_times(run)
    cutoff = now - datetime.timedelta(days=days)
    old = {r for r, t in asked.items() if _parse_time(t) <= cutoff}
    return [k for k, r in run.outstanding.items() if r in old]


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def remaining(run: rundir.Run, keys: list[str]) -> dict:
    """The outstanding set without ``keys``."""
    gone = set(keys)
    return {k: r for k, r in run.outstanding.items() if k not in gone}


def commit_withdrawal(run: rundir.Run, keys: list[str], command: str) -> dict:
    """One commit returning ``keys`` to the pool, and its history line (caller holds the lock)."""
    left = remaining(run, keys)
    rounds = sorted({run.outstanding[k] for k in keys})
    record = {
        "command": command,
        "withdrawn": len(keys),
        "rounds": rounds,
        "ids": [int(k) for k in keys] if run.id_kind == "int" else keys,
        "outstanding": len(left),
    }
    if keys:
        run = rundir.commit(run, state={"outstanding": left})
        rundir.append_history(run, record)
    return record
