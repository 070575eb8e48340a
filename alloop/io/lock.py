"""One alloop command at a time per run: an exclusive ``flock`` on ``RUN/.lock``."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from alloop.errors import UserError

LOCK_NAME = ".lock"
_POLL_S = 0.05


@contextmanager
def run_lock(run_dir: Path, wait: float = 5.0):
    """Hold the run's lock for the ``with`` block, polling up to ``wait`` seconds for it.

    The lock is a ``flock`` on ``run_dir/.lock``, which the kernel drops when its holder exits,
    however it exits: a lock left by a killed process (even SIGKILL) is free again at once, with
    no stale-lock cleanup. The holder's pid is written into the file only to name it when another
    command has to give up. Not re-entrant: a second ``run_lock`` on the same run in the same
    process waits for the first like any other command.
    """
    run_dir = Path(run_dir)
    fd = _open_lock_file(run_dir)
    try:
        _acquire(fd, run_dir, wait)
        try:
            _write_pid(fd)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock_file(run_dir: Path) -> int:
    try:
        return os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        raise UserError(
            f"run '{run_dir.name}' not found at {run_dir}: create it with `alloop init {run_dir.name} --pool PATH`"
        ) from None


def _acquire(fd: int, run_dir: Path, wait: float) -> None:
    """Try the lock until ``wait`` seconds have passed, then raise a UserError naming the holder."""
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _busy(run_dir) from None
            time.sleep(min(_POLL_S, remaining))


def _busy(run_dir: Path) -> UserError:
    pid = _read_pid(run_dir / LOCK_NAME)
    return UserError(
        f"run '{run_dir.name}' is busy: another alloop command (pid {pid}) is using it; "
        "wait for it to finish or pass --wait SECONDS"
    )


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_pid(path: Path) -> str:
    """The holder's pid as written in the lock file, or 'unknown' if it has not written it yet."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
