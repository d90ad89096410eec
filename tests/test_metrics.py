"""GET /metrics as an operator's Prometheus reads it, and `--log-format json` as a log shipper reads it.

The scrapes go through a real app over the tiny CLIP and an embedded store,
after real searches: the counters must have moved by exactly what was done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import error_of, free_port, wait_for_http

RED = Path("generated") / "RED-BAG.png"
STAGES = ("decode", "locate", "cutout", "embed", "query", "rank")


def scrape(client, headers: dict | None = None) -> dict[tuple, float]:
    """/metrics parsed by Prometheus' own parser: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def photo(dam: Path) -> dict:
    return {"image": ("red.png", (dam / RED).read_bytes(), "image/png")}


def test_a_scrape_after_real_searches_shows_requests_stages_queue_batches_and_the_collection(synced, serve, dam):
    client = serve(workers=2, queue=3)
    answers = [client.post("/v1/search", files=photo(dam)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    images = synced["added"]
    samples = eventually_counted(client, "catalogue_collection_products")

    assert value(samples, "catalogue_requests_total", method="POST", route="/v1/search", status="200") == 3
    assert value(samples, "catalogue_request_duration_seconds_count", method="POST", route="/v1/search") == 3
    for stage in STAGES:
        assert value(samples, "catalogue_search_stage_seconds_count", search="photo", stage=stage) == 3, stage
    assert value(samples, "catalogue_searches", state="running") == 0
    assert value(samples, "catalogue_searches", state="waiting") == 0
    assert value(samples, "catalogue_searches_admitted_max") == 5
    assert value(samples, "catalogue_batch_size_count") >= 3  # the warm-up's forward, then one per search at most
    assert value(samples, "catalogue_batch_size_sum") >= 3
    assert value(samples, "catalogue_model_load_seconds") > 0
    assert value(samples, "catalogue_collection_points", collection="catalogue") == images
    assert 0 < value(samples, "catalogue_collection_products", collection="catalogue") <= images
    assert value(samples, "catalogue_store_views", collection="catalogue") == 0
    assert value(samples, "catalogue_feedback_entries", collection="catalogue") == 0
    assert not [key for key in samples if key[0].startswith("catalogue_last_sync")]  # no --watch: no pass to show

    product = answers[0].json()["matches"][0]["product_id"]
    recorded = client.post("/v1/feedback", params={"product_id": product}, files=photo(dam))
    assert recorded.status_code == 201, recorded.text
    samples = scrape(client)
    assert value(samples, "catalogue_feedback_entries", collection="catalogue") == 1
    assert value(samples, "catalogue_store_views", collection="catalogue") == 1
    assert value(samples, "catalogue_collection_points", collection="catalogue") == images + 1
    assert value(samples, "catalogue_requests_total", method="POST", route="/v1/feedback", status="201") == 1
    assert value(samples, "catalogue_requests_total", method="GET", route="/metrics", status="200") >= 1


def eventually_counted(client, name: str) -> dict:
    """A scrape once `name` has a sample (the products are counted in the background after the load)."""
    from conftest import eventually

    def counted() -> dict | None:
        samples = scrape(client)
        return samples if any(key[0] == name for key in samples) else None

    return eventually(counted, awaited=name)


def test_a_watch_pass_shows_its_duration_its_images_and_the_new_counts(synced, serve, dam):
    from conftest import eventually, studio_shot

    studio_shot(dam / "NEW-ITEM.png", (250, 200, 0))  # changed before the server starts: its first pass has them all
    studio_shot(dam / "OTHER-ITEM.png", (0, 200, 250))
    (dam / RED).unlink()
    client = serve(watch=dam, watch_interval=0.2)

    def passed() -> dict | None:
        samples = scrape(client)
        return samples if value(samples, "catalogue_last_sync_files", outcome="deleted") == 1 else None

    samples = eventually(passed, awaited="a watch pass that deleted RED-BAG")
    assert value(samples, "catalogue_last_sync_files", outcome="added") == 2
    assert value(samples, "catalogue_last_sync_files", outcome="updated") == 0
    assert value(samples, "catalogue_last_sync_files", outcome="failed") == 0
    assert value(samples, "catalogue_last_sync_seconds") > 0
    assert value(samples, "catalogue_last_sync_timestamp_seconds") > client.service.started
    assert value(samples, "catalogue_watch_errors_total") == 0
    points = synced["added"] + 1  # two images in, one out
    eventually(lambda: value(scrape(client), "catalogue_collection_points", collection="catalogue") == points)


def test_a_route_is_counted_by_its_template_not_its_path(synced, serve):
    client = serve()
    for product in ("P1", "P2", "P3"):
        assert client.get(f"/v1/products/{product}").status_code == 404
    assert client.get("/no/such/thing").status_code == 404
    samples = scrape(client)
    assert value(samples, "catalogue_requests_total", method="GET", route="/v1/products/{product_id:path}", status="404") == 3
    assert value(samples, "catalogue_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not [key for key in samples if "P1" in str(key) or "/no/such" in str(key)]


def test_refusals_are_counted_by_reason(synced, serve, dam, tmp_path):
    """A server still loading refuses (not_ready); a stopping one refuses too (shutting_down)."""
    loading = unloaded(tmp_path)
    assert "not ready" in error_of(loading.post("/v1/search", files=photo(dam)), 503)
    samples = scrape(loading)
    assert value(samples, "catalogue_refusals_total", reason="not_ready") == 1
    assert value(samples, "catalogue_refusals_total", reason="busy") == 0
    assert value(samples, "catalogue_requests_total", method="POST", route="/v1/search", status="503") == 1

    stopping = serve()
    stopping.service.stop(0)
    assert "shutting down" in error_of(stopping.post("/v1/search", files=photo(dam)), 503)
    samples = scrape(stopping)
    assert value(samples, "catalogue_refusals_total", reason="shutting_down") == 1
    assert value(samples, "catalogue_refusals_total", reason="not_ready") == 0  # each app counts its own


def test_a_full_pool_and_a_spent_upload_budget_are_counted_apart(synced, serve, dam):
    import threading

    from starlette.requests import Request

    client = serve(workers=1, queue=1, upload_budget_mb=0.05)
    budget = client.app.state.gate.budget
    upload = Request({"type": "http", "headers": [(b"content-length", str(budget).encode())]})
    with client.app.state.gate.admit(upload, budget):  # another upload holds the whole budget
        assert "uploads in flight" in error_of(client.post("/v1/search", files=photo(dam)), 503)

    release = threading.Event()
    held = [client.service.submit(release.wait, 30) for _ in range(2)]  # one running, one waiting: the pool is full
    try:
        assert "too many searches" in error_of(client.post("/v1/search", files=photo(dam)), 503)
        samples = scrape(client)
    finally:
        release.set()
    assert [answer.result(timeout=30) for answer in held] == [True, True]
    assert value(samples, "catalogue_searches", state="running") == 1
    assert value(samples, "catalogue_searches", state="waiting") == 1
    assert value(samples, "catalogue_refusals_total", reason="upload_budget") == 1
    assert value(samples, "catalogue_refusals_total", reason="busy") == 1
    assert value(samples, "catalogue_requests_total", method="POST", route="/v1/search", status="503") == 2


def unloaded(tmp_path, **config):
    """A TestClient over an app whose service never loads (no lifespan)."""
    from fastapi.testclient import TestClient

    from search.serve.app import create_app
    from search.serve.service import ServeConfig, Service

    return TestClient(create_app(Service(ServeConfig(qdrant_path=str(tmp_path / "qdrant"), **config))))


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_metrics_take_the_metrics_key_else_the_api_key_else_none(tmp_path):
    assert value(scrape(unloaded(tmp_path)), "catalogue_searches", state="running") == 0  # open, and before ready

    api_only = unloaded(tmp_path, api_key="search-key")
    assert "API key" in error_of(api_only.get("/metrics"), 401)
    scrape(api_only, bearer("search-key"))

    both = unloaded(tmp_path, api_key="search-key", metrics_key="scraper-key")
    assert "metrics key" in error_of(both.get("/metrics", headers=bearer("search-key")), 401)
    scrape(both, bearer("scraper-key"))
    assert "API key" in error_of(both.get("/v1/info", headers=bearer("scraper-key")), 401)  # it opens nothing else


def test_log_format_json_makes_every_stderr_line_one_json_object(synced, store, dam):
    port = free_port()
    command = [sys.executable, "-m", "catalogue_cli.search", "serve", "--qdrant-path", store, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--locate", "none", "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        import httpx

        wait_for_http(port)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/search", files=photo(dam), headers={"X-Request-ID": "find-me"})
        assert answer.status_code == 200
    finally:
        process.terminate()
        _out, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]  # each line is one object, or this fails
    [line] = [line for line in lines if line.get("request_id") == "find-me"]
    assert line["method"] == "POST" and line["route"] == "/v1/search" and line["status"] == 200
    assert line["ms"] > 0 and set(STAGES) <= set(line["stages"]) and line["level"] == "info"
    assert any(line.get("message", "").startswith("ready: collection") for line in lines)
