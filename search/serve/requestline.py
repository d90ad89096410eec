"""`RequestLine`: every request's id, one log line and its metrics per request, whatever becomes of it.

The line says: request id, method, path, status, milliseconds, the search's
stage timings, and a note (a client gone, a request cancelled); never a key.
`--log-format json` makes it, and every other log line, one JSON object
(`JsonLines`) for a log shipper. The metrics count a request by its route's
template (`/v1/products/{product_id}`), never its path: a path per product
would make a series per product.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request

from search.serve import bodies
from search.serve.errors import error_response

log = logging.getLogger("catalogue.serve")
#: How long a connection whose request body was not read stays open after its answer while the client is
#: still sending (at most, and with no more than LINGER_IDLE_SECONDS between two pieces): closing on unread
#: data resets the connection, and a browser then loses the answer, showing a network error instead of
#: the reason. A client that sends nothing more is not waited for.
LINGER_SECONDS = 5.0
LINGER_IDLE_SECONDS = 0.5


class RequestLine:
    """A plain ASGI middleware (not `@app.middleware`), so that it sees a request
    cancelled while the server stops, and a failure of ours, and can still answer
    each with one line of JSON and log one line (a traceback only for a failure
    of ours). A response sent before its request's body was read closes the
    connection once sent, after at most LINGER_SECONDS of discarding what the
    client still sends: the rest of the body is never kept."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:12]
        request.state.request_id = request_id
        request.state.timings = None
        request.state.note = None
        started = time.perf_counter()
        unread = bodies.content_length(request) != 0 and (
            "content-length" in request.headers or "transfer-encoding" in request.headers
        )
        status = None

        async def receive_body():
            nonlocal unread
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def send_headed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                timings = request.state.timings or {}
                if timings:
                    headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in timings.items())
                if unread:
                    headers["Connection"] = "close"
            elif message["type"] == "http.response.body" and unread and not message.get("more_body", False):
                await send({**message, "more_body": True})  # the whole answer (its length is known) goes now
                await _discard_body(receive)
                message = {"type": "http.response.body", "body": b""}  # ...and the connection closes after this
            await send(message)

        async def answer(code: int, message: str, headers: dict | None = None) -> None:
            if status is None:
                with contextlib.suppress(Exception):  # the connection may be gone too
                    await error_response(request, code, message, headers)(scope, receive_body, send_headed)

        try:
            await self.app(scope, receive_body, send_headed)
        except asyncio.CancelledError:  # the server stops: uvicorn cancels what its grace period did not finish
            request.state.note = "cancelled: the server is stopping"
            unread = False  # answer and close at once: no lingering while the server stops
            request.app.state.service.metrics.refusals.labels("shutting_down").inc()
            await answer(503, "the server is stopping; retry in a moment", {"Retry-After": "2"})
        except Exception:
            log.exception("%s internal error", request_id)
            await answer(500, "internal error; the server log has the details under this request id")
        seconds = time.perf_counter() - started
        route = route_of(scope)
        request.app.state.service.metrics.observe_request(request.method, route, status, seconds)
        _log_line(request, route, status, seconds)


async def _discard_body(receive) -> None:
    """Read and drop what the client still sends of its body, while it keeps sending (LINGER_*)."""
    deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):  # cancelled: the server stops, no lingering
        while True:
            left = min(deadline - asyncio.get_running_loop().time(), LINGER_IDLE_SECONDS)
            message = await asyncio.wait_for(receive(), max(left, 0.0))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


def route_of(scope: dict) -> str:
    """The template of the route that answered (`/v1/products/{product_id}`); a mounted app's folder
    (`/static/{path}`); `unmatched` for a path no route knows."""
    route = scope.get("route")
    if route is not None:
        return route.path
    if scope.get("endpoint") is not None:
        return scope.get("root_path", "") + "/{path}"
    return "unmatched"


def _log_line(request: Request, route: str, status: int | None, seconds: float) -> None:
    timings = request.state.timings or {}
    fields = {
        "request_id": request.state.request_id,
        "method": request.method,
        "route": route,
        "path": request.url.path,
        "status": status,
        "ms": round(seconds * 1000, 1),
        "stages": timings,
        "note": request.state.note,
    }
    log.info(
        "%s %s %s %s %.0fms%s%s",
        request.state.request_id,
        request.method,
        request.url.path,
        status or "-",
        seconds * 1000,
        "".join(f" {k}={v}" for k, v in timings.items()),
        f" {request.state.note}" if request.state.note else "",
        extra={"request": fields},
    )


class JsonLines(logging.Formatter):
    """One JSON object per log line: a request's fields as they are, any other line as its message;
    a traceback as one field, never lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "request", None)
        line |= fields if fields is not None else {"message": record.getMessage()}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: str) -> None:
    """The process's log lines on stderr: text (time, level, message), or `json` (`JsonLines`), warnings
    of Python's `warnings` included."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
