"""The one exception type that means "the user got something wrong", and where an exception would
be lost (a signal handler raising into a garbage-collector callback)."""

import gc


class UserError(Exception):
    """A mistake the user can fix: the CLI prints it as one line on stderr and exits 2.

    The message names the problem and the fix, e.g.
    ``"label file 'x.csv' has no column 'target': add it, or pass --target NAME"``.
    """


def drops_exceptions(frame) -> bool:
    """Whether ``frame`` runs inside a garbage-collector callback or a ``__del__``, where Python
    prints an exception as "ignored" instead of raising it (JAX registers such a callback): a
    signal handler there delivers its interruption again a moment later (the CLI, simulate)."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
