"""The one exception type that means "the user got something wrong"."""


class UserError(Exception):
    """A mistake the user can fix: the CLI prints it as one line on stderr and exits 2.

    The message names the problem and the fix, e.g.
    ``"label file 'x.csv' has no column 'target': add it, or pass --target NAME"``.
    """
