"""Request bodies from clients we cannot trust: admitted before a byte is read, read under a deadline, bounded.

A body is read only once its request holds a place: at most `slots` bodies
in flight (the searches' workers plus their queue), and the bytes they may
hold within `budget` (each counts its Content-Length, or the largest body
allowed when it does not say). Otherwise it is refused at once, unread, so a
burst of uploads costs nothing. A body must arrive whole within `timeout`
seconds of the first read: a client that stalls mid-upload is cut off rather
than holding its bytes and its place. A client that leaves mid-way is
reported as that, not as a failure of ours.

Everything here runs on the event loop, so the counts need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator

from starlette.requests import Request


class Refused(Exception):
    """No place or no budget for this body right now: retry in a moment."""


class OverBudget(Refused):
    """The uploads in flight hold the whole budget."""


class TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the upload is larger than the {limit / 2**20:.3g} MB limit")


class TooSlow(Exception):
    def __init__(self, timeout: float):
        super().__init__(f"the body did not arrive within {timeout:g} s; send it again")


class ClientGone(Exception):
    """The client closed the connection before its body was read."""

    def __init__(self, received: int, declared: int | None):
        of = f" of {declared:,}" if declared is not None else ""
        super().__init__(f"client closed the connection during its upload ({received:,}{of} bytes received)")


class BadJson(Exception):
    """A body that is not UTF-8 JSON, or is nested too deeply to read."""


class Gate:
    """Places and a byte budget for the bodies in flight."""

    def __init__(self, slots: int, budget: int):
        self.slots = slots
        self.budget = budget
        self.held = 0
        self.held_bytes = 0

    @contextlib.contextmanager
    def admit(self, request: Request, limit: int) -> Iterator[None]:
        """Hold a place and `request`'s share of the budget while the body is read and answered; Refused
        when the places are taken or the budget is spent. One body always fits, whatever its size."""
        declared = content_length(request)
        if declared is not None and declared > limit:
            raise TooLarge(limit)
        size = limit if declared is None else declared
        if self.held >= self.slots:
            raise Refused("too many searches at once; retry in a moment")
        if self.held and self.held_bytes + size > self.budget:
            raise OverBudget("too many uploads in flight; retry in a moment")
        self.held += 1
        self.held_bytes += size
        try:
            yield
        finally:
            self.held -= 1
            self.held_bytes -= size


def content_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


async def chunks(request: Request, limit: int, timeout: float) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive: TooLarge past `limit` bytes, TooSlow past `timeout` seconds,
    ClientGone when the client leaves first."""
    declared = content_length(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received = 0
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                message = await request.receive()
        except TimeoutError:
            raise TooSlow(timeout) from None
        if message["type"] == "http.disconnect":
            raise ClientGone(received, declared)
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise TooLarge(limit)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def read(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, within `limit` bytes and `timeout` seconds."""
    return b"".join([chunk async for chunk in chunks(request, limit, timeout)])


async def read_json(request: Request, limit: int, timeout: float) -> object:
    """The body as JSON: strict UTF-8, no NaN or Infinity, no string that could not be answered back."""
    body = await read(request, limit, timeout)
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") fails here, not in the answer
    except UnicodeError:
        raise BadJson("the body is not UTF-8 text") from None
    except RecursionError:
        raise BadJson("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise BadJson(f"the body is not JSON: {str(exc).splitlines()[0]}") from None
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
