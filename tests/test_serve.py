"""`search serve`: the HTTP API over a real store and real models, bad input as JSON errors, load, security.

The app runs in-process through FastAPI's TestClient (real routing, real
lifespan: the service loads in the background as in production); the last
tests start the real `search serve` command as a process.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from conftest import error_of, eventually, free_port, serve_argv, serve_holding, studio_shot, wait_for_http
from PIL import Image

RED = Path("generated") / "RED-BAG.png"


def png(size=(64, 48), colour=(200, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_search_returns_what_search_image_json_prints(synced, serve, cli, dam, store):
    client = serve()
    photo = dam / RED
    multipart = client.post("/v1/search", files={"image": ("red.png", photo.read_bytes(), "image/png")}, params={"top_k": 5})
    raw = client.post("/v1/search", content=photo.read_bytes(), headers={"Content-Type": "image/png"}, params={"top_k": 5})
    assert multipart.status_code == raw.status_code == 200
    shown = client.get(multipart.json()["matches"][0]["image"])  # over HTTP, a match's image is its URL
    assert shown.status_code == 200 and shown.content == photo.read_bytes()
    client.__exit__(None, None, None)  # the embedded store is one process at a time: free it for the CLI
    [printed] = json.loads(
        cli("search", "image", photo, "--qdrant-path", store, "--json", "--top-k", "5", "--locate", "none").stdout
    )
    for body in (multipart.json(), raw.json()):
        assert set(body) == set(printed)
        for key in ("confidence", "confident", "width", "height"):
            assert body[key] == printed[key], key
        # The same matches, but where the CLI names the image's file, the API gives its URL on the server.
        for answered, cli_answered in zip([body["matches"], *body["groups"]], [printed["matches"], *printed["groups"]]):
            assert without_image(answered) == without_image(cli_answered)
        assert body["matches"][0]["image"] == f"/v1/images/{body['matches'][0]['point_id']}"
    assert printed["matches"][0]["image"] == str(photo)
    assert multipart.json()["query"] == "red.png" and multipart.json()["matches"][0]["product_id"] == "RED-BAG"
    assert "embed" in multipart.headers["Server-Timing"]


def without_image(found):
    """Matches (or a group of them) less each match's `image`."""
    if isinstance(found, dict):
        return {**found, "matches": without_image(found["matches"])}
    return [{k: v for k, v in match.items() if k != "image"} for match in found]


@pytest.mark.parametrize(
    ("body", "kind", "status", "words"),
    [
        (b"hello, not an image", "image/jpeg", 422, "not an image"),
        (b"", "image/png", 422, "empty"),
        (png()[:60], "image/png", 422, "unreadable image"),
        (png(), "text/plain", 415, "content type"),
        (png(), "application/json", 415, "content type"),
        (png(), None, 415, "missing"),
    ],
    ids=["not-an-image", "empty", "truncated", "text", "json", "no-type"],
)
def test_bad_uploads_are_json_errors(synced, serve, body, kind, status, words):
    client = serve()
    headers = {"Content-Type": kind} if kind else {}
    assert words in error_of(client.post("/v1/search", content=body, headers=headers), status)


def test_truncated_jpeg_upload_is_422(synced, serve, dam):
    client = serve()
    data = (dam / "M3550HLEZJM900.jpeg").read_bytes()
    assert "unreadable" in error_of(
        client.post("/v1/search", files={"image": ("x.jpg", data[: len(data) // 3], "image/jpeg")}), 422
    )


def test_upload_over_the_limit_is_413_before_it_is_read(synced, serve):
    client = serve(max_upload_mb=0.05)
    big = png((600, 600)) + b"\0" * 60_000
    assert "limit" in error_of(client.post("/v1/search", content=big, headers={"Content-Type": "image/png"}), 413)
    assert "limit" in error_of(client.post("/v1/search", files={"image": ("big.png", big, "image/png")}), 413)

    def chunked():  # no Content-Length: the limit holds while streaming
        for _ in range(20):
            yield b"\0" * 10_000

    assert "limit" in error_of(client.post("/v1/search", content=chunked(), headers={"Content-Type": "image/png"}), 413)
    assert client.post("/v1/search", content=png(), headers={"Content-Type": "image/png"}).status_code == 200


def test_decompression_bomb_is_422(synced, serve):
    client = serve()
    bomb = bytearray(png((1, 1)))
    bomb[16:24] = struct.pack(">II", 15000, 15000)  # claims 225 megapixels
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    assert "pixel limit" in error_of(client.post("/v1/search", content=bytes(bomb), headers={"Content-Type": "image/png"}), 422)


@pytest.mark.parametrize(
    "params",
    [
        {"top_k": 0},
        {"top_k": -1},
        {"top_k": 10**6},
        {"top_k": "ten"},
        {"alpha": "nan"},
        {"alpha": "inf"},
        {"threshold": "inf"},
        {"threshold": "nan"},
        {"min_confidence": 2},
        {"filter": "a[=1"},
        {"filter": "category"},
        {"locate": "owlv2"},
        {"locate": "x"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_bad_options_are_422(synced, serve, params):
    client = serve()
    error_of(client.post("/v1/search", content=png(), headers={"Content-Type": "image/png"}, params=params), 422)


def test_products_images_and_info(synced, serve, dam):
    client = serve()
    product = client.get("/v1/products/RED-BAG").json()
    assert product["product_id"] == "RED-BAG" and [i["path"] for i in product["images"]] == ["generated/RED-BAG.png"]
    image = client.get(product["images"][0]["url"])
    assert image.status_code == 200 and image.content == (dam / RED).read_bytes()
    assert client.get("/v1/images/generated/RED-BAG.png").content == image.content  # by indexed path too
    assert "no product" in error_of(client.get("/v1/products/NOPE"), 404)
    info = client.get("/v1/info").json()
    assert info["images"] == 16 and info["text"] is True and info["models"][0]["dim"] == 16
    assert info["store"].startswith("embedded store")


@pytest.mark.parametrize(
    "reference",
    [
        "../../../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "/etc/passwd",
        "generated/../../dam/M3550HLEZJM900.jpeg",
        "notes.txt",
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_images_never_leave_the_indexed_files(synced, serve, dam, reference):
    (dam / "notes.txt").write_text("not indexed")
    client = serve()
    assert client.get(f"/v1/images/{reference}").status_code == 404


def test_an_indexed_file_turned_into_a_link_out_of_the_dam_is_not_served(synced, dam, tmp_path, serve):
    """Sync never indexes links leading out of the DAM; a file swapped for one after its sync is not served either."""
    secret = studio_shot(tmp_path / "outside" / "SECRET.png", (9, 9, 9))
    client = serve()
    url = client.get("/v1/products/RED-BAG").json()["images"][0]["url"]
    assert client.get(url).status_code == 200
    (dam / RED).unlink()
    (dam / RED).symlink_to(secret)  # still indexed under its path, now leading out of the DAM
    assert client.get(url).status_code == 404
    assert client.get(f"/v1/images/{RED.as_posix()}").status_code == 404


@pytest.mark.slow  # syncs with the real Lite0 weights
def test_text_search_with_a_text_tower_and_400_without(cli, dam, store, clip_with_tokenizer, serve, tmp_path):
    assert cli("indexer", "sync", dam, "--model", clip_with_tokenizer, "--qdrant-path", store).exit_code == 0
    client = serve()
    found = client.post("/v1/search/text", json={"text": "red bag", "top_k": 3})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["query"] == "red bag" and len(body["matches"]) == 3 and body["groups"][0]["box"] is None
    error_of(client.post("/v1/search/text", json={"text": ""}), 422)
    error_of(client.post("/v1/search/text", json={"text": "x", "top_k": 0}), 422)
    client.__exit__(None, None, None)

    other = tmp_path / "lite-store"
    assert cli("indexer", "sync", dam, "--model", "efficientnet-lite0", "--qdrant-path", other).exit_code == 0
    client = serve(qdrant_path=str(other))
    assert "no text tower" in error_of(client.post("/v1/search/text", json={"text": "red bag"}), 400)


def test_api_key_is_required_on_the_api_but_not_for_health(synced, serve):
    client = serve(api_key="s3cret")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    denied = client.get("/v1/info")
    assert "API key" in error_of(denied, 401) and denied.headers["WWW-Authenticate"] == "Bearer"
    error_of(client.get("/v1/info", headers={"Authorization": "Bearer wrong"}), 401)
    error_of(client.get("/v1/info", headers={"Authorization": "s3cret"}), 401)
    assert client.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/").status_code == 200  # the page loads, then asks for the key


def test_the_key_never_reaches_the_log(synced, serve, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="catalogue.serve")
    client = serve(api_key="s3cret-key")
    client.get("/v1/info", headers={"Authorization": "Bearer s3cret-key"})
    client.get("/v1/info", headers={"Authorization": "Bearer wrong-key"})
    lines = [r.getMessage() for r in caplog.records if "/v1/info" in r.getMessage()]
    assert len(lines) == 2 and all("key" not in line for line in lines)
    assert lines[0].split()[1:4] == ["GET", "/v1/info", "200"] and lines[1].split()[3] == "401"


def test_cors_is_off_unless_an_origin_is_given(synced, serve):
    headers = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    client = serve()
    assert "access-control-allow-origin" not in client.options("/v1/search", headers=headers).headers
    client.__exit__(None, None, None)
    client = serve(cors=("https://shop.example",))
    assert client.options("/v1/search", headers=headers).headers["access-control-allow-origin"] == "https://shop.example"


def test_overload_gets_a_fast_503_and_the_server_stays_healthy(synced, serve):
    client = serve(workers=1, queue=0)
    service = client.service
    release, entered = threading.Event(), threading.Event()
    real = service.search_upload

    def slow(*args):
        entered.set()
        release.wait(30)
        return real(*args)

    service.search_upload = slow
    first = {}
    worker = threading.Thread(
        target=lambda: first.setdefault("r", client.post("/v1/search", content=png(), headers={"Content-Type": "image/png"}))
    )
    worker.start()
    assert entered.wait(30)
    started = time.perf_counter()
    refused = client.post("/v1/search", content=png(), headers={"Content-Type": "image/png"})
    assert time.perf_counter() - started < 1.0
    assert "too many" in error_of(refused, 503) and refused.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 200
    release.set()
    worker.join(30)
    assert first["r"].status_code == 200
    service.search_upload = real
    assert client.post("/v1/search", content=png(), headers={"Content-Type": "image/png"}).status_code == 200


def test_concurrent_searches_share_model_forwards_and_agree_with_serial_ones(synced, serve, dam):
    client = serve(workers=8, batch_wait=0.05)
    photos = [p for p in sorted(dam.rglob("*")) if p.suffix.lower() in (".jpeg", ".png")][:8]

    def search(photo):
        return client.post("/v1/search", files={"image": (photo.name, photo.read_bytes())}).json()["matches"]

    serial = [search(p) for p in photos]
    encoder = client.service.searcher.encoders[0]
    before = encoder.forwards
    results: dict = {}
    threads = [threading.Thread(target=lambda p=p: results.setdefault(p, search(p))) for p in photos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # The same answers, whatever the interleaving (batched forwards differ from single ones by float rounding).
    for photo, alone in zip(photos, serial):
        together = results[photo]
        assert together[0]["product_id"] == alone[0]["product_id"]
        assert [round(m["score"], 3) for m in together] == pytest.approx([round(m["score"], 3) for m in alone], abs=2e-3)
    assert encoder.forwards - before < len(photos)  # and fewer model forwards than searches


def test_not_ready_yet_and_failed_to_load_are_503(serve, tmp_path):
    client = serve(qdrant_path=str(tmp_path / "no-store"), ready=False)
    eventually(lambda: client.service.failure is not None)
    reason = client.get("/readyz").json()["reason"]
    assert reason.startswith("failed: no embedded store") and str(tmp_path) not in reason  # named, not located
    assert "not ready" in error_of(client.post("/v1/search", content=png(), headers={"Content-Type": "image/png"}), 503)
    assert client.get("/healthz").status_code == 200


def test_watch_makes_new_changed_and_deleted_images_searchable_within_seconds(synced, serve, dam):
    client = serve(watch=dam, watch_interval=0.2)
    studio_shot(dam / "NEW-ITEM.png", (250, 200, 0))
    eventually(lambda: client.get("/v1/products/NEW-ITEM").status_code == 200)
    found = client.post("/v1/search", files={"image": ("n.png", (dam / "NEW-ITEM.png").read_bytes())}).json()
    assert found["matches"][0]["product_id"] == "NEW-ITEM"
    (dam / "NEW-ITEM.png").unlink()
    eventually(lambda: client.get("/v1/products/NEW-ITEM").status_code == 404)
    assert client.get("/v1/info").json()["watch"]["deleted"] == 1


def test_serve_command_starts_answers_and_stops(synced, store, dam):
    import httpx

    port = free_port()
    process = subprocess.Popen(
        serve_argv(store, port, "--locate", "none"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(port)
        found = httpx.post(f"http://127.0.0.1:{port}/v1/search", files={"image": ("r.png", (dam / RED).read_bytes())}, timeout=60)
        assert found.json()["matches"][0]["product_id"] == "RED-BAG"
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]["/v1/search"]
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 0
    request_lines = [line for line in err.splitlines() if " POST /v1/search 200 " in line]
    assert len(request_lines) == 1 and "embed=" in request_lines[0]


def test_serve_command_that_cannot_load_exits_with_one_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "catalogue_cli.search",
            "serve",
            "--qdrant-path",
            str(tmp_path / "none"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert done.stderr.strip().splitlines()[-1].startswith("Error: no embedded store at")
    assert "Traceback" not in done.stderr


def test_an_api_key_without_tls_off_loopback_is_warned_about(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "catalogue_cli.search",
            "serve",
            "--qdrant-path",
            str(tmp_path / "none"),
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "CATALOGUE_API_KEY": "k"},
    )
    assert "without TLS" in done.stderr and "store Wi-Fi" in done.stderr


def test_serve_help_lists_its_options():
    done = subprocess.run(
        [sys.executable, "-m", "catalogue_cli.search", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    for option in ("--host", "--port", "--watch", "--tls-cert", "--cors-origin", "--max-upload-mb", "CATALOGUE_API_KEY"):
        assert option in done.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_serve_over_tls(synced, store, tmp_path):
    import ssl

    import httpx

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        serve_argv(store, port, "--tls-cert", str(cert), "--tls-key", str(key)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answer = eventually(
            lambda: httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context(cafile=str(cert))),
            timeout=120,
            interval=0.2,
            ignoring=(httpx.TransportError,),
            awaited="search serve to answer over TLS",
        )
        assert answer.json() == {"status": "ok"}
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")  # plain HTTP is not served
    finally:
        process.terminate()
        process.communicate(timeout=60)


def test_search_image_hands_the_photos_to_the_serve_holding_the_store(synced, store, dam, cli, monkeypatch):
    """The embedded store is one process at a time; with search serve holding it, search image asks the server."""

    with serve_holding(store, CATALOGUE_API_KEY="k3y") as port:
        photo = dam / RED
        refused = cli("search", "image", photo, "--qdrant-path", store, "--json")
        assert refused.exit_code == 4 and "CATALOGUE_API_KEY" in refused.stderr  # the server wants its key
        monkeypatch.setenv("CATALOGUE_API_KEY", "k3y")
        (dam / "notes.jpg").write_text("not an image")
        result = cli("search", "image", photo, dam / "notes.jpg", "--qdrant-path", store, "--json", "--top-k", "3", "-v")
        assert result.exit_code == 7, result.output
        [entry] = json.loads(result.stdout)
        assert entry["query"] == str(photo) and entry["matches"][0]["product_id"] == "RED-BAG" and len(entry["matches"]) == 3
        assert f"{dam / 'notes.jpg'}: not an image" in result.stderr
        assert f"answered by search serve at http://127.0.0.1:{port}" in result.stderr
        table = cli("search", "image", photo, "--qdrant-path", store)
        assert table.exit_code == 0 and table.stdout.splitlines()[2].split()[1] == "RED-BAG"
    assert not Path(store, "serve.json").exists()  # withdrawn when the server stopped
