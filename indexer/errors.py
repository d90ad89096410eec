"""Errors a user can act on, each with the exit code the CLIs return for it.

    CatalogueError          exit 1   anything the user can fix; the message says how
    +-- OptionError         exit 2   an option value or combination that cannot work
    +-- BadInputError       exit 3   a missing folder, a file that is not a usable image
    +-- StoreUnavailable    exit 4   Qdrant unreachable, or the embedded store is locked
    |   +-- StoreInUse               another process holds the embedded store (which one, when known)
    +-- PortInUse           exit 4   another process listens on `search serve`'s port
    +-- ModelMismatch       exit 5   the collection was built with another model
    +-- ModelLoadError      exit 6   the model cannot be loaded (not found, no network)

A command that does what it can but meets some bad inputs (a sync's
files, a search's photos, feedback ids) exits 7 (`EXIT_PARTIAL`), after
reporting each. Programming errors are not caught: they should surface
as tracebacks and bug reports.
"""

from __future__ import annotations

EXIT_PARTIAL = 7


class CatalogueError(Exception):
    """Base class: the message is one line a user can act on."""

    exit_code = 1


class OptionError(CatalogueError):
    exit_code = 2


class BadInputError(CatalogueError):
    exit_code = 3

    def without(self, label: str) -> str:
        """The message without its leading "label: ", for reports that name the file beside it."""
        return str(self).removeprefix(f"{label}: ")


class StoreUnavailable(CatalogueError):
    exit_code = 4


class StoreInUse(StoreUnavailable):
    """Another process holds the embedded store: `pid` and `command` when its lock file says."""

    def __init__(self, message: str, *, folder, pid: int | None = None, command: str | None = None):
        super().__init__(message)
        self.folder = folder
        self.pid = pid
        self.command = command


class PortInUse(CatalogueError):
    exit_code = 4


class ModelMismatch(CatalogueError):
    exit_code = 5


class ModelLoadError(CatalogueError):
    exit_code = 6


def first_line(exc: BaseException) -> str:
    """A library exception as one line for our messages (its first line, or its type)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
