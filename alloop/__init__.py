"""alloop: active learning with regularity tangents (SGDF) and the SLD query heuristic.

The Python API (``alloop.open_run``, ``alloop.init_run``; see ``alloop.api``) runs the same use cases
as the ``alloop`` command. Importing ``alloop`` itself starts nothing heavy: JAX loads with the first
command that trains or scores.
"""

__version__ = "0.1.0"

from alloop.config import RunConfig  # noqa: E402
from alloop.errors import UserError  # noqa: E402

__all__ = [
    "__version__",
    "RunConfig",
    "UserError",
    "open_run",
    "init_run",
    "QueryResult",
    "IngestResult",
]


def __getattr__(name: str):
    if name in ("open_run", "init_run", "QueryResult", "IngestResult", "Run"):
        from alloop import api

        return getattr(api, name)
    raise AttributeError(f"module 'alloop' has no attribute {name!r}")
