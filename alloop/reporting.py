"""How use cases tell the outside world what they are doing, without knowing about terminals."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Reporter:
    """Silent by default; the CLI subclasses it with rich progress bars on stderr."""

    @contextlib.contextmanager
    def progress(
        self, description: str, total: float | None = None
    ) -> Iterator[Callable[[float], None]]:
        """A task with an optional total; yields ``advance(n)``."""
        yield lambda n=1: None

    def info(self, message: str) -> None:
        """A line worth showing (e.g. what a fallback did)."""

    def warn(self, message: str) -> None:
        """Something the user should look at; never fatal."""


class Recorder(Reporter):
    """Keeps messages in lists (tests, and JSON output)."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
