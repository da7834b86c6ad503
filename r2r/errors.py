"""The one exception type users see from r2r.

Every message says what was expected, what was given and how to fix it.
"""


class R2RUserError(ValueError):
    """A problem with the user's input, files or settings (not a bug in r2r)."""


class R2RWeightsNotFound(R2RUserError, FileNotFoundError):
    """Model weights are missing; the message names the files and the folder to put them in."""
