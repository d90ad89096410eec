"""The app made of routers: every /v1/ route asks for its key, and a search's options are one rule.

The hand-off (`search image` while `search serve` holds the store) sends a
SearchOptions as query parameters; the server must build the very same
options from them, and build SearchOptions' defaults when none are sent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import error_of

RED = Path("generated") / "RED-BAG.png"


def recording(service, method: str) -> list:
    """Record the options each call of `service.<method>` is given (the call itself goes on)."""
    original = getattr(service, method)
    seen = []

    def record(*args):
        seen.append(next(a for a in args if type(a).__name__ == "SearchOptions"))
        return original(*args)

    setattr(service, method, record)
    return seen


def test_the_hand_off_query_builds_the_same_options_on_the_server(synced, serve, dam):
    from search.options import SearchOptions, make_options
    from search.serve.handoff import query_of

    client = serve()
    seen = recording(client.service, "search_upload")
    options = make_options(
        top_k=3,
        candidates=7,
        alpha=0.2,
        threshold=12.5,
        colour=False,
        filters=["category=Bags", "meta.season!=SS20"],
        min_confidence=0.3,
        store_views=False,
    )
    assert all(getattr(options, f.name) != f.default for f in dataclasses.fields(SearchOptions))  # each field is sent
    photo = {"image": ("red.png", (dam / RED).read_bytes(), "image/png")}
    assert client.post("/v1/search", params=query_of(options, "none"), files=photo).status_code == 200
    assert client.post("/v1/search", files=photo).status_code == 200
    assert seen == [options, SearchOptions()]


def test_a_text_search_takes_the_search_defaults(cli, dam, store, clip_with_tokenizer, serve):
    from search.options import make_options

    assert cli("indexer", "sync", dam, "--model", clip_with_tokenizer, "--qdrant-path", store).exit_code == 0
    client = serve()
    seen = recording(client.service, "search_text")
    assert client.post("/v1/search/text", json={"text": "red bag"}).status_code == 200
    assert client.post("/v1/search/text", json={"text": "red bag", "top_k": 2, "filters": ["category=Bags"]}).status_code == 200
    assert seen == [make_options(colour=False), make_options(top_k=2, filters=["category=Bags"], colour=False)]


def unloaded(tmp_path, **config):
    """A TestClient over an app whose service never loads (no lifespan): the keys are checked before readiness."""
    from fastapi.testclient import TestClient

    from search.serve.app import create_app
    from search.serve.service import ServeConfig, Service

    app = create_app(Service(ServeConfig(qdrant_path=str(tmp_path / "qdrant"), **config)))
    return app, TestClient(app)


def test_every_v1_route_asks_for_its_key_and_health_and_the_page_do_not(tmp_path):
    app, client = unloaded(tmp_path, api_key="search-key", feedback_key="staff-key")
    routes = [(path, method) for path, methods in app.openapi()["paths"].items() for method in methods]
    assert len([path for path, _ in routes if path.startswith("/v1/")]) == 9
    for path, method in routes:
        url = path.format(product_id="P1", reference="a.jpg", entry_id=1)
        if path.startswith("/v1/feedback"):
            assert "feedback key" in error_of(client.request(method, url), 401), url
            assert "feedback key" in error_of(client.request(method, url, headers={"Authorization": "Bearer search-key"}), 401)
        elif path.startswith("/v1/"):
            assert "API key" in error_of(client.request(method, url, headers={"Authorization": "Bearer staff-key"}), 401), url
        else:
            assert client.request(method, url).status_code in (200, 503), url  # /readyz: 503 while not loaded
    assert client.get("/").status_code == 200
    assert "not ready" in error_of(client.get("/v1/info", headers={"Authorization": "Bearer search-key"}), 503)


def test_a_browsers_preflight_is_answered_without_the_key(tmp_path):
    """A preflight (OPTIONS) never carries the key: CORS answers it, the request that follows sends the key."""
    _app, client = unloaded(tmp_path, api_key="k", cors_origins=("https://shop.example",))
    headers = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    preflight = client.options("/v1/search", headers={**headers, "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://shop.example"
    error_of(client.post("/v1/search", headers={"Origin": "https://shop.example"}), 401)
