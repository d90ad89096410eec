"""The HTTP API and the staff page, over one `Service`.

    POST /v1/search               a photo (multipart field `image`, or the raw body as image/*) -> the
                                  same JSON object as one entry of `search image --json`
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
the status that fits (413, 415, 422, 404, 401, 403, 503 + Retry-After);
nothing ever returns a stack trace. Feedback changes what every later search
answers, so /v1/feedback takes its own key (CATALOGUE_FEEDBACK_KEY) when one
is set, else the API key; with neither, only a server on the loopback
interface accepts it. Each request logs one line: request id, method,
path, status, milliseconds and the search's stage timings; never a key.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as InPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser  # imported here: not on the first request

from indexer.errors import BadInputError, CatalogueError, OptionError, StoreUnavailable, first_line
from indexer.feedback import MAX_ID
from indexer.store.schema import MAX_PRODUCT_ID
from search.confidence import DEFAULT_MIN_CONFIDENCE
from search.options import make_options
from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from search.serve.service import Busy, NotReady, Service, ShuttingDown

log = logging.getLogger("catalogue.serve")
STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 25
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
    cors_origins: tuple[str, ...] = (),
) -> FastAPI:
    """The ASGI app; `service.load()` runs in the background from startup, `service.close()` at shutdown.

    `feedback_key` guards /v1/feedback (else `api_key` does); `open_feedback` lets it through without
    any key (a server listening on loopback only)."""
    max_upload = int(max_upload_mb * 2**20)

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

    @app.middleware("http")
    async def request_line(request: Request, call_next):
        """Request id, the API key check, and one log line per request."""
        request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:12]
        request.state.request_id = request_id
        request.state.timings = None
        started = time.perf_counter()
        path = request.url.path
        feedback = path == FEEDBACK_PATH or path.startswith(FEEDBACK_PATH + "/")
        required = (feedback_key or api_key) if feedback else api_key
        if required and path.startswith("/v1/") and not _authorised(request, required):
            which = "feedback key" if feedback and feedback_key else "API key"
            response = _error(
                request, 401, f"missing or wrong {which}: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"}
            )
        elif feedback and not required and not open_feedback:
            response = _error(
                request,
                403,
                "feedback is off on this server: it listens beyond loopback without a key; "
                "start it with CATALOGUE_FEEDBACK_KEY (or CATALOGUE_API_KEY) set",
            )
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        timings = request.state.timings or {}
        if timings:
            response.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in timings.items())
        log.info(
            "%s %s %s %d %.0fms%s",
            request_id,
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
            "".join(f" {k}={v}" for k, v in timings.items()),
        )
        return response

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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("%s internal error", getattr(request.state, "request_id", "-"))
        return _error(request, 500, "internal error; the server log has the details under this request id")

    # -- health ----------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="The process is alive.")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Models loaded and store open.")
    def readyz():
        if service.ready.is_set():
            return {"ready": True}
        reason = f"failed: {service.failure}" if service.failure else "loading the models and the store"
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
        data, name = await _photo(request, max_upload)
        result = await asyncio.wrap_future(service.submit(service.search_upload, data, name, options, locate))
        request.state.timings = result["timings_ms"]
        return result

    @app.post("/v1/search/text", tags=["search"], summary="Products matching a description (CLIP-family models).")
    async def search_text(query: TextQuery, request: Request):
        options = make_options(top_k=query.top_k, candidates=query.candidates, filters=query.filters, colour=False)
        if service.ready.is_set() and not service.has_text():
            raise ApiError(
                400,
                "this collection's model has no text tower: text search needs a CLIP model such as patrickjohncyh/fashion-clip",
            )
        result = await asyncio.wrap_future(service.submit(service.search_text, query.text.strip(), options))
        request.state.timings = result["timings_ms"]
        return result

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
        return await asyncio.wrap_future(service.submit(service.info))

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
    ):
        from indexer.feedback import parse_box

        if bool(product_id) == not_in_catalogue:
            raise ApiError(422, "say what the photo shows: product_id=ID, or not_in_catalogue=true")
        located = parse_box(box)
        shown = _answered(answered)
        data, name = await _photo(request, max_upload)
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


async def _photo(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded photo's bytes and name: a multipart field `image` (or the only file), or the raw body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = kind == "multipart/form-data"
    if not multipart and not kind.startswith(RAW_TYPES):
        raise ApiError(
            415,
            f"content type {kind or 'missing'!r}: send the photo as multipart/form-data (field 'image') or as an image/* body",
        )
    body = await _body(request, limit + (MULTIPART_SLACK if multipart else 0))
    if not multipart:
        data, name = body, "upload"
    else:

        async def chunks():
            yield body

        try:
            form = await MultiPartParser(request.headers, chunks(), max_files=2, max_fields=20).parse()
        except MultiPartException as exc:
            raise ApiError(422, f"malformed multipart body: {first_line(exc)}") from None
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        upload = form.get("image") if isinstance(form.get("image"), UploadFile) else (files[0] if len(files) == 1 else None)
        if upload is None:
            raise ApiError(422, "no photo in the form: send it in the field 'image'")
        data, name = await upload.read(), upload.filename or "upload"
        await form.close()
    if len(data) > limit:
        raise ApiError(413, f"the photo is larger than the {limit / 2**20:g} MB upload limit")
    if not data:
        raise ApiError(422, "empty body: no photo was sent")
    return data, name


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the upload is larger than the {limit / 2**20:.0f} MB limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the upload is larger than the {limit / 2**20:.0f} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)


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
    return JSONResponse({"error": message, "status": status, "request_id": request_id}, status_code=status, headers=headers)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("catalogue-indexer")
    except PackageNotFoundError:
        return "unknown"
