"""The exceptions netsift raises for problems a user can fix.

The CLI prints any ``NetsiftError`` as one line (``netsift: error: ...``) and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class NetsiftError(Exception):
    """Base class: a problem with the input, the environment or the request."""


class CaptureError(NetsiftError):
    """A capture file cannot be read at all (missing, empty, not a capture, unsupported)."""


class UsageError(NetsiftError):
    """A request that cannot be carried out as given (bad option value, empty input list)."""


class StorageError(NetsiftError):
    """The output location cannot be written (full disk, permissions, foreign files)."""
