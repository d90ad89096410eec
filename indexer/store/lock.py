"""One process at a time in each collection of an embedded store, and a message that names the one holding it.

The embedded engine locks each shard's write-ahead log, but a second process
only learns "WouldBlock". Before opening a collection, a store takes an
exclusive lock on `locks/NAME.lock` and writes who it is (pid, command, since
when) into it, so the next process can say "in use by process 1234 (indexer
sync ./dam)". The lock is per collection, not per store: a new collection is
built (`indexer sync --into NEW`) by one process while `search serve` answers
from the live one in another. The operating system drops the lock when the
process ends, however it ends (kill -9 included): a stale file never blocks
anyone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from indexer.errors import StoreInUse

LOCKS = "locks"


class CollectionLock:
    """An exclusive, non-blocking lock on one collection of a store folder, held until `release()`."""

    def __init__(self, folder: Path, collection: str, command: str | None = None):
        import portalocker

        self.path = folder / LOCKS / f"{collection}.lock"
        try:
            self.path.parent.mkdir(exist_ok=True)
            self._handle = open(self.path, "a+")
            writable = True
        except OSError:
            try:  # a read-only folder: lock without recording who we are
                self._handle = open(self.path)
            except OSError:
                self._handle = None
                return
            writable = False
        try:
            portalocker.lock(self._handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            pid, holder_command = read_holder(self.path)
            holder = f"process {pid} ({holder_command})" if pid is not None else "another process"
            self._handle.close()
            self._handle = None
            raise StoreInUse(
                f"collection {collection!r} of the embedded store {folder} is in use by {holder}; wait for it to finish "
                "or stop it, or run a Qdrant server (--qdrant-url) for several processes at once",
                folder=folder,
                pid=pid,
                command=holder_command,
            ) from None
        if writable:
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.write(json.dumps({"pid": os.getpid(), "command": command or _command_line(), "since": time.time()}))
            self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            import portalocker

            try:
                self._handle.seek(0)
                self._handle.truncate()
            except OSError:
                pass
            portalocker.unlock(self._handle)
            self._handle.close()
            self._handle = None


def read_holder(path: Path) -> tuple[int | None, str | None]:
    """(pid, command) of the process a lock file names, or (None, None) when it says nothing."""
    try:
        holder = json.loads(path.read_text())
        return int(holder["pid"]), str(holder["command"])[:120]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _command_line() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("-c", "__main__.py", "-m"):
        program = "python"
    return " ".join([program, *sys.argv[1:3]]).replace("\n", " ")
