"""What a failure answers over HTTP: one line of JSON, the status that fits, never a stack trace.

    {"error": one line, "status": code, "request_id": id}

Each failure the app knows (the library's error tree, the service's
refusals, a body's) maps to its status and headers in `ANSWERS`; `install`
registers them. No answer names the server's own folders (`hide_folders`),
an error nor a description of the server.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.errors import BadInputError, CatalogueError, OptionError, StoreUnavailable
from search.serve import bodies
from search.serve.service import Busy, NotReady, Service, ShuttingDown


class ApiError(Exception):
    """A route's refusal: its status, its one line, its headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


#: failure -> (status, its line ("{}": the failure's own words), headers).
ANSWERS: dict[type[Exception], tuple[int, str, dict]] = {
    OptionError: (422, "{}", {}),
    BadInputError: (422, "{}", {}),
    StoreUnavailable: (503, "{}", {"Retry-After": "5"}),
    CatalogueError: (400, "{}", {}),
    Busy: (503, "too many searches at once; retry in a moment", {"Retry-After": "1"}),
    NotReady: (503, "not ready: {}", {"Retry-After": "2"}),
    ShuttingDown: (503, "the server is shutting down; retry in a moment", {"Retry-After": "5"}),
    bodies.Refused: (503, "{}", {"Retry-After": "1"}),
    bodies.TooLarge: (413, "{}", {}),
    bodies.TooSlow: (408, "{}", {}),
    bodies.BadJson: (422, "{}", {}),
}


def install(app: FastAPI) -> None:
    """Register an exception handler for every failure the app answers."""
    for kind, answer in ANSWERS.items():
        app.add_exception_handler(kind, _answering(*answer))
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(bodies.ClientGone, _client_gone)


def _answering(status: int, line: str, headers: dict):
    async def answer(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, status, line.format(exc), headers)

    return answer


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc.status, str(exc), exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
    return error_response(request, 422, "; ".join(problems) or "invalid request")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(request, exc.status_code, str(exc.detail))


async def _client_gone(request: Request, exc: bodies.ClientGone) -> JSONResponse:
    request.state.note = str(exc)  # the request's log line says it; nobody is left to answer
    return error_response(request, 499, str(exc))


def error_response(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    app = request.scope.get("app")
    service = getattr(getattr(app, "state", None), "service", None)
    message = message if service is None else hide_folders(message, service)
    return JSONResponse({"error": message, "status": status, "request_id": request_id}, status_code=status, headers=headers)


def hide_folders(text: str, service: Service) -> str:
    """`text` with the server's own folders (store, DAM, feedback store) named, not located: a client
    has no use for where they are on the server's disk, and an attacker would."""
    searcher = service.searcher
    folders = {
        service.config.qdrant_path,
        service.config.watch,
        getattr(service.store, "root", None),
        getattr(searcher, "root", None),
        getattr(searcher, "views_root", None),
    }
    spelled = {}
    for folder in filter(None, folders):
        for form in (Path(folder), Path(folder).absolute(), Path(folder).resolve()):
            if form.is_absolute() and len(form.parts) > 1:
                spelled[str(form)] = f"…/{form.name}"
    for path, name in sorted(spelled.items(), key=lambda item: -len(item[0])):
        text = re.sub(re.escape(path) + r"(?=$|[/\s'\",:;)])", lambda _found, name=name: name, text)
    return text
