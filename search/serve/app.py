"""The HTTP API and the staff page, over one `Service`.

    POST /v1/search               a photo (multipart field `image`, or the raw body as image/*) -> the
                                  same JSON object as one entry of `search image --json`, a match's
                                  `image` being its /v1/images URL rather than a path on this disk
    POST /v1/search/text          {"text": ...} -> products (models with a text tower)
    GET  /v1/products/{id}        a product's payload and images ('/' in an id sent as %2F)
    GET  /v1/products?product_id= the same, any id (browsers rewrite '.' and '..' segments of a path)
    GET  /v1/images/{point|path}  a catalogue image (indexed files under the DAM root only)
    GET  /v1/info                 models, counts, categories, calibration, store
    POST /v1/feedback             a photo and what it shows (?product_id=ID or ?not_in_catalogue=true; what the
                                  search showed as repeated ?answered=ID, best first): kept,
                                  and a confirmed product gains it as a store view (201)
    GET  /v1/feedback             the recorded feedback, newest first
    DELETE /v1/feedback/{id}      undo or prune an entry: its photo and its store view go too
    GET  /healthz, /readyz        alive; models loaded and store open
    GET  /                        the page for store staff (static files, no build step, no CDN)

Errors are JSON `{"error": one line, "status": code, "request_id": id}` with
the status that fits (408, 413, 415, 422, 404, 401, 403, 503 + Retry-After);
nothing ever returns a stack trace, nor a path of the server's folders. Bodies
are admitted before they are read and read under a deadline (`bodies.py`). Feedback changes what every later search
answers, so /v1/feedback takes its own key (CATALOGUE_FEEDBACK_KEY) when one
is set, else the API key; with neither, only a server on the loopback
interface accepts it. Each request logs one line: request id, method,
path, status, milliseconds and the search's stage timings; never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as InPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser  # imported here: not on the first request

from indexer.errors import BadInputError, CatalogueError, OptionError, StoreUnavailable, first_line
from indexer.feedback import MAX_ID
from indexer.store.schema import MAX_PRODUCT_ID
from search.confidence import DEFAULT_MIN_CONFIDENCE
from search.options import make_options
from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from search.serve import bodies
from search.serve.service import Busy, NotReady, Service, ShuttingDown

log = logging.getLogger("catalogue.serve")
STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 25
DEFAULT_UPLOAD_BUDGET_MB = 128
DEFAULT_READ_TIMEOUT_S = 30.0
#: A JSON body (a text query) is small: its text is at most MAX_TEXT characters.
MAX_JSON_BODY = 64 * 1024
#: Room for multipart boundaries and headers around the photo itself.
MULTIPART_SLACK = 64 * 1024
RAW_TYPES = ("image/", "application/octet-stream")
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json")
WEB_LOCALISERS = ("centre", "none", "proposals")
MAX_TEXT = 300
FEEDBACK_PATH = "/v1/feedback"
MAX_BY = 128
MAX_ANSWERED = 10


class TextQuery(BaseModel):
    model_config = ConfigDict(strict=True)  # true is not a number, "10" is not a count

    text: str = Field(min_length=1, max_length=MAX_TEXT, description="What to look for, e.g. 'black saddle bag'.")
    top_k: int = 10
    candidates: int = 100
    filters: list[str] = Field(default_factory=list, description="KEY=VALUE payload filters, all must hold.")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def create_app(
    service: Service,
    *,
    api_key: str | None = None,
    feedback_key: str | None = None,
    open_feedback: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    upload_budget_mb: float = DEFAULT_UPLOAD_BUDGET_MB,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    cors_origins: tuple[str, ...] = (),
) -> FastAPI:
    """The ASGI app; `service.load()` runs in the background from startup, `service.close()` at shutdown.

    `feedback_key` guards /v1/feedback (else `api_key` does); `open_feedback` lets it through without
    any key (a server listening on loopback only). Bodies: see `bodies` (`upload_budget_mb` held by
    uploads in flight, each within `read_timeout` seconds)."""
    max_upload = int(max_upload_mb * 2**20)
    gate = bodies.Gate(slots=service.config.workers + service.config.queue, budget=int(upload_budget_mb * 2**20))

    def admission(limit_of):
        """A route's dependency: its request holds a place for its body, and for its search, before a byte
        is read; refused at once (503) when the server is not ready or the places or the budget are taken."""

        async def admitted(request: Request):
            if not service.ready.is_set():
                raise NotReady(str(service.failure) if service.failure else "loading the models and the store")
            with gate.admit(request, limit_of(request)):
                yield

        return Depends(admitted)

    photo_place = admission(
        lambda request: max_upload + (MULTIPART_SLACK if _media_type(request) == "multipart/form-data" else 0)
    )
    json_place = admission(lambda _request: MAX_JSON_BODY)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        threading.Thread(target=service.load, name="load", daemon=True).start()
        yield
        service.close()

    app = FastAPI(
        title="catalogue-indexer",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Name the catalogue product in a store photo. Same JSON as `search image --json`.",
    )
    app.state.service = service
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Server-Timing"],
        )

    def refusal(request: Request) -> JSONResponse | None:
        """The API key check: the answer that refuses `request`, or None to let it through."""
        path = request.url.path
        feedback = path == FEEDBACK_PATH or path.startswith(FEEDBACK_PATH + "/")
        required = (feedback_key or api_key) if feedback else api_key
        if required and path.startswith("/v1/") and not _authorised(request, required):
            which = "feedback key" if feedback and feedback_key else "API key"
            return _error(
                request, 401, f"missing or wrong {which}: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"}
            )
        if feedback and not required and not open_feedback:
            return _error(
                request,
                403,
                "feedback is off on this server: it listens beyond loopback without a key; "
                "start it with CATALOGUE_FEEDBACK_KEY (or CATALOGUE_API_KEY) set",
            )
        return None

    app.add_middleware(RequestLine, refusal=refusal)

    # -- errors: one line of JSON, the right status, never a stack trace ----------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(request, exc.status, str(exc), exc.headers)

    @app.exception_handler(OptionError)
    async def option_error(request: Request, exc: OptionError):
        return _error(request, 422, str(exc))

    @app.exception_handler(BadInputError)
    async def bad_input(request: Request, exc: BadInputError):
        return _error(request, 422, str(exc))

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable):
        return _error(request, 503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(CatalogueError)
    async def catalogue_error(request: Request, exc: CatalogueError):
        return _error(request, 400, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, _exc: Busy):
        return _error(request, 503, "too many searches at once; retry in a moment", {"Retry-After": "1"})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        return _error(request, 503, f"not ready: {exc}", {"Retry-After": "2"})

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, _exc: ShuttingDown):
        return _error(request, 503, "the server is shutting down; retry in a moment", {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return _error(request, 422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(bodies.Refused)
    async def refused(request: Request, exc: bodies.Refused):
        return _error(request, 503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(bodies.TooLarge)
    async def too_large(request: Request, exc: bodies.TooLarge):
        return _error(request, 413, str(exc))

    @app.exception_handler(bodies.TooSlow)
    async def too_slow(request: Request, exc: bodies.TooSlow):
        return _error(request, 408, str(exc))

    @app.exception_handler(bodies.BadJson)
    async def bad_json(request: Request, exc: bodies.BadJson):
        return _error(request, 422, str(exc))

    @app.exception_handler(bodies.ClientGone)
    async def client_gone(request: Request, exc: bodies.ClientGone):
        request.state.note = str(exc)  # the request's log line says it; nobody is left to answer
        return _error(request, 499, str(exc))

    # -- health ----------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="The process is alive.")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Models loaded and store open.")
    def readyz():
        if service.ready.is_set():
            return {"ready": True}
        failure = service.failure and _hide_folders(str(service.failure), service)
        reason = f"failed: {failure}" if failure else "loading the models and the store"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503, headers={"Retry-After": "2"})

    # -- the API ---------------------------------------------------------------------------------

    @app.post("/v1/search", tags=["search"], summary="Name the product(s) in a photo.")
    async def search(
        request: Request,
        top_k: int = Query(10, description="Products to return per located product."),
        candidates: int = Query(100, description="Nearest catalogue images re-scored."),
        alpha: float = Query(DEFAULT_ALPHA, description="Weight of the colour bonus."),
        threshold: float = Query(DEFAULT_THRESHOLD, description="CIELAB distance beyond which colour gives no bonus."),
        colour: bool = Query(True, description="false: rank by cosine only."),
        filter: list[str] = Query([], description="KEY=VALUE payload filter, repeatable (all must hold)."),
        locate: str | None = Query(None, description="centre, none or proposals (owlv2 when the server was started with it)."),
        min_confidence: float = Query(DEFAULT_MIN_CONFIDENCE, description="Below this the answer is flagged not confident."),
        store_views: bool = Query(True, description="false: match catalogue images only, not store photos staff confirmed."),
        _place: None = photo_place,
    ):
        options = make_options(
            top_k=top_k,
            candidates=candidates,
            alpha=alpha,
            threshold=threshold,
            colour=colour,
            filters=filter,
            min_confidence=min_confidence,
            store_views=store_views,
        )
        if locate is not None and locate not in (*WEB_LOCALISERS, service.config.locate):
            raise OptionError(f"locate {locate!r}: choose one of {', '.join(sorted({*WEB_LOCALISERS, service.config.locate}))}")
        data, name = await _photo(request, max_upload, read_timeout)
        result = await asyncio.wrap_future(service.submit(service.search_upload, data, name, options, locate))
        request.state.timings = result["timings_ms"]
        return _image_urls(result)

    @app.post(
        "/v1/search/text",
        tags=["search"],
        summary="Products matching a description (CLIP-family models).",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": TextQuery.model_json_schema()}}}
        },
    )
    async def search_text(request: Request, _place: None = json_place):
        query = _validated(TextQuery, await bodies.read_json(request, MAX_JSON_BODY, read_timeout))
        options = make_options(top_k=query.top_k, candidates=query.candidates, filters=query.filters, colour=False)
        if service.ready.is_set() and not service.has_text():
            raise ApiError(
                400,
                "this collection's model has no text tower: text search needs a CLIP model such as patrickjohncyh/fashion-clip",
            )
        result = await asyncio.wrap_future(service.submit(service.search_text, query.text.strip(), options))
        request.state.timings = result["timings_ms"]
        return _image_urls(result)

    async def product_named(product_id: str) -> dict:
        found = await asyncio.wrap_future(service.submit(service.product, product_id))
        if found is None:
            raise ApiError(404, f"no product {product_id[:80]!r} in collection {service.config.collection!r}")
        return found

    @app.get("/v1/products", tags=["catalogue"], summary="A product's payload and images, any id.")
    async def product_by_query(
        product_id: str = Query(..., max_length=MAX_PRODUCT_ID, description="The product id, as the catalogue spells it."),
    ):
        return await product_named(product_id)

    # `:path`: an id may hold '/', sent as %2F. Browsers rewrite '.' and '..' segments even encoded: the page uses the query.
    @app.get("/v1/products/{product_id:path}", tags=["catalogue"], summary="A product's payload and images.")
    async def product(product_id: str):
        return await product_named(product_id)

    @app.get("/v1/images/{reference:path}", tags=["catalogue"], summary="A catalogue image, by point id or indexed path.")
    async def image(reference: str):
        path = await asyncio.wrap_future(service.submit(service.image_file, reference))
        if path is None:
            raise ApiError(404, "no indexed catalogue image by that id or path")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @app.get("/v1/info", tags=["catalogue"], summary="Models, counts, categories, calibration, store.")
    async def info():
        found = await asyncio.wrap_future(service.submit(service.info))
        found["store"] = _hide_folders(found["store"], service)
        found["root"] = found["root"] and Path(found["root"]).name
        if found.get("watch"):
            found["watch"]["folder"] = Path(found["watch"]["folder"]).name
        found["uploads"] = {"in_flight": gate.held, "bytes": gate.held_bytes, "budget": gate.budget}
        return found

    # -- feedback: what staff say a photo shows ------------------------------------------------------

    @app.post(FEEDBACK_PATH, tags=["feedback"], status_code=201, summary="Record what a photo shows; it becomes a store view.")
    async def add_feedback(
        request: Request,
        product_id: str | None = Query(None, max_length=MAX_PRODUCT_ID, description="The product the photo shows."),
        not_in_catalogue: bool = Query(False, description="true: the product is not in the catalogue."),
        box: str | None = Query(None, description="x0,y0,x1,y1: where the product is, in pixels of the photo as decoded."),
        answered: list[str] | None = Query(
            None, description="The product ids the search answered, best first: one per parameter, or one comma-separated value."
        ),
        by: str | None = Query(None, max_length=MAX_BY, description="Who confirmed (a staff or device id)."),
        origin: Literal["api", "page", "cli"] = Query(
            "api", description="Where the answer comes from, as the caller says (page: the staff page, cli: indexer feedback)."
        ),
        _place: None = photo_place,
    ):
        from indexer.feedback import parse_box

        if bool(product_id) == not_in_catalogue:
            raise ApiError(422, "say what the photo shows: product_id=ID, or not_in_catalogue=true")
        located = parse_box(box)
        shown = _answered(answered)
        data, name = await _photo(request, max_upload, read_timeout)
        if product_id and service.ready.is_set() and not service.views.has_product(product_id):
            raise ApiError(404, f"no product {product_id[:80]!r} in collection {service.config.collection!r}")
        return await asyncio.wrap_future(
            service.submit(service.record_feedback, data, name, product_id or None, located, shown, by, origin)
        )

    @app.get(FEEDBACK_PATH, tags=["feedback"], summary="The recorded feedback, newest first.")
    async def list_feedback(
        product_id: str | None = Query(None, max_length=MAX_PRODUCT_ID, description="Only this product's entries."),
        limit: int = Query(50, ge=1, le=1000, description="Newest entries returned."),
    ):
        return await asyncio.wrap_future(service.submit(service.feedback_entries, product_id, limit))

    @app.delete(FEEDBACK_PATH + "/{entry_id}", tags=["feedback"], summary="Undo or prune an entry and its store view.")
    async def remove_feedback(entry_id: int = InPath(ge=1, le=MAX_ID, description="The entry's id, as listed.")):
        removed = await asyncio.wrap_future(service.submit(service.remove_feedback, entry_id))
        if removed is None:
            raise ApiError(404, f"no feedback entry {entry_id}")
        return removed

    # -- the page ----------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class RequestLine:
    """The request id, the key check, and one log line per request, whatever becomes of it.

    A plain ASGI middleware (not `@app.middleware`), so that it sees a request
    cancelled while the server stops, and a failure of ours, and can still answer
    each with one line of JSON and log one line (a traceback only for a failure
    of ours). A response sent before its request's body was read closes the
    connection: the rest of the body is never read."""

    def __init__(self, app, refusal):
        self.app = app
        self.refusal = refusal

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
            await send(message)

        async def answer(code: int, message: str, headers: dict | None = None) -> None:
            if status is None:
                with contextlib.suppress(Exception):  # the connection may be gone too
                    await _error(request, code, message, headers)(scope, receive_body, send_headed)

        try:
            refused = self.refusal(request)
            await (refused or self.app)(scope, receive_body, send_headed)
        except asyncio.CancelledError:  # the server stops: uvicorn cancels what its grace period did not finish
            request.state.note = "cancelled: the server is stopping"
            await answer(503, "the server is stopping; retry in a moment", {"Retry-After": "2"})
        except Exception:
            log.exception("%s internal error", request_id)
            await answer(500, "internal error; the server log has the details under this request id")
        timings = request.state.timings or {}
        log.info(
            "%s %s %s %s %.0fms%s%s",
            request_id,
            request.method,
            request.url.path,
            status or "-",
            (time.perf_counter() - started) * 1000,
            "".join(f" {k}={v}" for k, v in timings.items()),
            f" {request.state.note}" if request.state.note else "",
        )


async def _photo(request: Request, limit: int, timeout: float) -> tuple[bytes, str]:
    """The uploaded photo's bytes and name: a multipart field `image` (or the only file), or the raw body.
    A multipart body streams into the form parser (which spools a file past 1 MB to disk)."""
    kind = _media_type(request)
    multipart = kind == "multipart/form-data"
    if not multipart and not kind.startswith(RAW_TYPES):
        raise ApiError(
            415,
            f"content type {kind or 'missing'!r}: send the photo as multipart/form-data (field 'image') or as an image/* body",
        )
    if not multipart:
        data, name = await bodies.read(request, limit, timeout), "upload"
    else:
        body = bodies.chunks(request, limit + MULTIPART_SLACK, timeout)
        try:
            form = await MultiPartParser(request.headers, body, max_files=2, max_fields=20).parse()
        except MultiPartException as exc:
            raise ApiError(422, f"malformed multipart body: {first_line(exc)}") from None
        try:
            files = [v for v in form.values() if isinstance(v, UploadFile)]
            upload = form.get("image") if isinstance(form.get("image"), UploadFile) else (files[0] if len(files) == 1 else None)
            if upload is None:
                raise ApiError(422, "no photo in the form: send it in the field 'image'")
            data, name = await upload.read(), upload.filename or "upload"
        finally:
            await form.close()
    if len(data) > limit:
        raise ApiError(413, f"the photo is larger than the {limit / 2**20:g} MB upload limit")
    if not data:
        raise ApiError(422, "empty body: no photo was sent")
    return data, name


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _validated(model: type[BaseModel], value: object) -> BaseModel:
    """`value` as `model`, or the 422 that names each field at fault."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _image_urls(result: dict) -> dict:
    """A search's answer over HTTP: each match's `image` is its URL on this server, not a path on its disk
    (`path` stays relative to the DAM root, or to the feedback store for a store view)."""
    for matches in (result["matches"], *(group["matches"] for group in result["groups"])):
        for match in matches:
            match["image"] = f"/v1/images/{match['point_id']}" if match.get("point_id") else None
    return result


def _answered(values: list[str] | None) -> list[str] | None:
    """The ids of `answered`: repeated, each value is one id (ids may hold commas; empty ones are skipped);
    a lone value is a comma-separated list, as clients sent it first."""
    if values is None:
        return None
    ids = values[0].split(",") if len(values) == 1 else values
    return [i.strip() for i in ids if i.strip()][:MAX_ANSWERED]


def _authorised(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    app = request.scope.get("app")
    service = getattr(getattr(app, "state", None), "service", None)
    message = message if service is None else _hide_folders(message, service)
    return JSONResponse({"error": message, "status": status, "request_id": request_id}, status_code=status, headers=headers)


def _hide_folders(text: str, service: Service) -> str:
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("catalogue-indexer")
    except PackageNotFoundError:
        return "unknown"
