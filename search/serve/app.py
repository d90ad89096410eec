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
    GET  /metrics                 Prometheus' text format (CATALOGUE_METRICS_KEY, else the API key)
    GET  /                        the page for store staff (static files, no build step, no CDN)

Errors are JSON `{"error": one line, "status": code, "request_id": id}` with
the status that fits (408, 413, 415, 422, 404, 401, 403, 503 + Retry-After);
nothing ever returns a stack trace, nor a path of the server's folders
(`errors.py`). Bodies are admitted before they are read and read under a
deadline (`bodies.py`). Feedback changes what every later search answers, so
/v1/feedback takes its own key (CATALOGUE_FEEDBACK_KEY) when one is set, else
the API key; with neither, only a server on the loopback interface accepts it
(`dependencies.py`). Each request logs one line (`requestline.py`).

The routes live in `routes/`, one router per area; `create_app` only puts
the app together.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from search.serve import bodies, errors
from search.serve.metrics import count_refusals
from search.serve.requestline import RequestLine
from search.serve.routes import catalogue, feedback, health, metrics, page, search
from search.serve.service import Service


def create_app(service: Service) -> FastAPI:
    """The ASGI app over `service`, set up by its `ServeConfig`: `service.load()` runs in the background
    from startup, `service.close()` at shutdown."""
    config = service.config

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
    app.state.gate = bodies.Gate(slots=config.workers + config.queue, budget=int(config.upload_budget_mb * 2**20))
    for area in (health, search, catalogue, feedback, metrics, page):
        app.include_router(area.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    errors.install(app)
    count_refusals(app, service.metrics)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Server-Timing"],
        )
    app.add_middleware(RequestLine)  # outermost: it sees every request, whatever becomes of it
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("catalogue-indexer")
    except PackageNotFoundError:
        return "unknown"
