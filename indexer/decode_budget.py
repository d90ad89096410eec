"""The memory that image decodes running at once may hold, shared by every thread (and sync worker).

A file of a few KB can decode to hundreds of MB: the pixel limit alone lets
each of `search serve`'s workers, or each of a sync's processes, hold the
worst case at the same time. Each decode asks for its estimated bytes
before it allocates anything and gives them back when its picture is down
to the size the pipeline needs; decodes that do not fit wait. A decode that
could never fit is refused with one line instead of waiting forever.

The budget is CATALOGUE_DECODE_BUDGET_MB (`indexer.settings`) per
process, or per sync when its workers share one (`shared`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager

from indexer import settings
from indexer.errors import BadInputError

#: Decodes at least this large hand their freed pages back to the OS once done (glibc keeps them otherwise).
TRIM_FROM_BYTES = 64 * 2**20


def budget_bytes() -> int:
    return settings.get("decode_budget_mb") * 2**20


class DecodeBudget:
    """A counting budget in bytes: `hold(n)` waits until n bytes are free and keeps them for its block.

    Built on a condition and a shared counter, so that the same code serves threads
    (threading primitives) and worker processes (multiprocessing ones, handed to them at start).
    """

    def __init__(self, total: int, condition=None, used=None):
        self.total = total
        self._condition = condition if condition is not None else threading.Condition()
        self._used = used if used is not None else _Counter()

    @classmethod
    def shared(cls, context, total: int | None = None) -> DecodeBudget:
        """One budget for the processes `context` starts (pass it to each as an initializer argument)."""
        return cls(budget_bytes() if total is None else total, context.Condition(), context.Value("q", 0, lock=False))

    def __getstate__(self) -> dict:
        return {"total": self.total, "condition": self._condition, "used": self._used}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["total"], state["condition"], state["used"])

    @contextmanager
    def hold(self, needed: int, label: str):
        """Keep `needed` bytes of the budget for the block; BadInputError at once if they never could be."""
        if needed > self.total:
            raise BadInputError(
                f"{label}: needs about {_mb(needed)} MB to decode, more than the {_mb(self.total)} MB decode budget; "
                f"raise {settings.setting_env('decode_budget_mb')} to accept it"
            )
        with self._condition:
            self._condition.wait_for(lambda: self._used.value + needed <= self.total)
            self._used.value += needed
        try:
            yield
        finally:
            if needed >= TRIM_FROM_BYTES:
                release_freed_memory()  # before the next decode may start
            with self._condition:
                self._used.value -= needed
                self._condition.notify_all()

    @property
    def used(self) -> int:
        with self._condition:
            return self._used.value


class _Counter:
    value = 0


def _mb(n: int) -> str:
    return f"{-(-n // 2**20):,}"


_installed: DecodeBudget | None = None
_own: DecodeBudget | None = None
_process_lock = threading.Lock()


def process_budget() -> DecodeBudget:
    """The budget this process's decodes share: the one `install`ed, else one of the environment's size."""
    global _own
    with _process_lock:
        if _installed is not None:
            return _installed
        total = budget_bytes()
        if _own is None or _own.total != total:
            _own = DecodeBudget(total)
        return _own


def install(budget: DecodeBudget) -> None:
    """Make `budget` this process's (a sync worker takes its sync's shared budget)."""
    global _installed
    with _process_lock:
        _installed = budget


def release_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc only; elsewhere nothing to do).

    Pillow allocates pictures in 16 MB blocks; after the first is freed glibc
    serves blocks of that size from its heap, which it keeps once they are
    freed: a process that decoded one huge picture would stay that large.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_trim_function: list = []


def _malloc_trim():
    if not _trim_function:
        found = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            found = libc.malloc_trim
            found.argtypes = [ctypes.c_size_t]
            found.restype = ctypes.c_int
        except (OSError, AttributeError):
            pass  # not glibc (musl, macOS): nothing to trim
        _trim_function.append(found)
    return _trim_function[0]
