"""`search serve` against hostile and unlucky clients: the real command, real sockets, real photos.

One server (a process, its log in a file) answers every test here but the
last, which stops its own. Clients stall mid-upload, send headers only,
leave mid-way, send JSON that is not quite JSON; the server must refuse
before reading what it cannot take, cut off what stalls, log one line per
request, and never tell a client where its folders are.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import DATA, eventually, free_port, serve_argv, studio_shot, wait_for_http
from PIL import Image

READ_TIMEOUT = 2  # seconds a body has to arrive (--read-timeout)
MAX_UPLOAD = 1_000_000  # --max-upload-mb 0.95367 (bytes, rounded)
BUDGET_MB = 1.5  # --upload-budget-mb: one upload of MAX_UPLOAD fits, not two
RED = Path("generated") / "RED-BAG.png"
MULTIPART = "multipart/form-data; boundary=b"
#: How each kind of body begins (then zeros): a form's part headers, a JSON object's first bytes.
OPENING = {
    "image/png": b"",
    MULTIPART: b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n',
    "application/json": b'{"text": "',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, clip_with_tokenizer):
    """A synced store and `search serve` on it: 1 worker, a queue of 1 (two bodies in flight at most)."""
    from catalogue_cli.indexer import main as indexer

    root = tmp_path_factory.mktemp("served")
    dam, store, log = root / "dam", root / "qdrant", root / "serve.log"
    shutil.copytree(DATA / "dam", dam)
    studio_shot(dam / RED, (200, 20, 30))
    synced = CliRunner().invoke(indexer, ["sync", str(dam), "--model", clip_with_tokenizer, "--qdrant-path", str(store)])
    assert synced.exit_code == 0, synced.output
    port = free_port()
    args = ["--workers", "1", "--queue", "1", "--read-timeout", str(READ_TIMEOUT), "--upload-budget-mb", str(BUDGET_MB)]
    args += ["--max-upload-mb", str(MAX_UPLOAD / 2**20)]
    with log.open("w") as err:
        process = subprocess.Popen(
            serve_argv(str(store), port, "--locate", "none", *args),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for_http(port)
        yield {"port": port, "base": f"http://127.0.0.1:{port}", "dam": dam, "store": store, "log": log}
    finally:
        process.terminate()
        process.communicate(timeout=60)


def png(size=(64, 48), colour=(200, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def head(path: str, length: int, kind: str = "image/png", request_id: str = "") -> bytes:
    """A POST's request line and headers, announcing a body of `length` bytes."""
    extra = f"X-Request-ID: {request_id}\r\n" if request_id else ""
    return f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server["port"]))
    sock.settimeout(READ_TIMEOUT + 30)  # a bound on every wait: never a hung test
    return sock


def answer(sock: socket.socket) -> tuple[int, dict, dict, bool]:
    """Read one response: (status, headers, JSON body, whether the server then closed the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    closed = False
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        closed = sock.recv(1) == b""
    return int(lines[0].split()[1]), headers, json.loads(body), closed


@contextlib.contextmanager
def stalled(server, length: int, sent: int, path: str = "/v1/search", kind: str = "image/png"):
    """An upload that announced `length` bytes, sent `sent`, and stalls; closed on the way out."""
    sock = connect(server)
    try:
        sock.sendall(head(path, length, kind) + b"\0" * sent)
        eventually(lambda: in_flight(server)["in_flight"] >= 1)
        yield sock
    finally:
        sock.close()


def in_flight(server) -> dict:
    return httpx.get(f"{server['base']}/v1/info", timeout=30).json()["uploads"]


@pytest.fixture
def idle(server):
    """Each test starts and ends with no body in flight."""
    eventually(lambda: in_flight(server)["in_flight"] == 0)
    yield server
    eventually(lambda: in_flight(server)["in_flight"] == 0)


def search(server, data: bytes, **params) -> httpx.Response:
    return httpx.post(
        f"{server['base']}/v1/search", content=data, headers={"Content-Type": "image/png"}, params=params, timeout=60
    )


# -- bodies: refused before they are read, cut off when they stall --------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/v1/search", "image/png"), ("/v1/search", MULTIPART), ("/v1/search/text", "application/json")],
    ids=["raw", "multipart", "json"],
)
def test_a_stalled_upload_is_cut_off_at_the_read_timeout(idle, path, kind):
    server = idle
    sock = connect(server)
    try:
        sock.sendall(head(path, 50_000, kind) + OPENING[kind] + b"a" * 20_000)  # then nothing more
        status, headers, body, closed = answer(sock)
    finally:
        sock.close()
    assert status == 408 and "did not arrive within 2 s" in body["error"]
    assert headers["connection"] == "close" and closed  # the rest of the body is never read
    assert search(server, png()).status_code == 200  # its place is free again


def test_a_full_queue_refuses_a_search_before_its_body_is_sent(idle):
    server = idle
    with stalled(server, 50_000, 10_000), stalled(server, 50_000, 10_000):  # the worker's place and the queue's
        eventually(lambda: in_flight(server)["in_flight"] == 2)
        for path, kind in (("/v1/search", "image/png"), ("/v1/search/text", "application/json")):
            sock = connect(server)
            try:
                sock.sendall(head(path, 40_000, kind))  # headers only: a 503 cannot have waited for the body
                status, headers, body, closed = answer(sock)
            finally:
                sock.close()
            assert status == 503 and headers["retry-after"] == "1" and "too many searches" in body["error"]
            assert headers["connection"] == "close" and closed
    eventually(lambda: in_flight(server)["in_flight"] == 0)  # the clients left: their places are free
    assert search(server, png()).status_code == 200


def test_a_client_still_sending_when_it_is_refused_reads_the_answer(idle):
    """A refusal goes out before the body is read; a client that keeps sending (as a browser does) must still
    read it: the server discards the rest for a while instead of resetting the connection under it."""
    server = idle
    too_big = 3 * MAX_UPLOAD  # refused (413) on its Content-Length, before a byte of it is read
    sock = connect(server)
    try:
        sock.sendall(head("/v1/search", too_big))
        for _ in range(too_big // 65536):
            sock.sendall(b"\0" * 65536)  # the whole body, as a client that does not look at early answers
        status, headers, body, _closed = answer(sock)
    finally:
        sock.close()
    assert status == 413 and "larger than" in body["error"] and headers["connection"] == "close"


def test_the_upload_budget_refuses_the_next_upload_before_reading_it(idle):
    server = idle
    with stalled(server, MAX_UPLOAD, MAX_UPLOAD // 2):  # holds MAX_UPLOAD of the 1.5 MB budget
        assert in_flight(server)["bytes"] == MAX_UPLOAD
        sock = connect(server)
        try:
            sock.sendall(head("/v1/search", MAX_UPLOAD))
            status, headers, body, _closed = answer(sock)
        finally:
            sock.close()
        assert status == 503 and headers["retry-after"] == "1" and "uploads in flight" in body["error"]
        assert search(server, png()).status_code == 200  # a small photo still fits beside it
    eventually(lambda: in_flight(server)["bytes"] == 0)
    big = png((600, 600)) + b"\0" * (MAX_UPLOAD - len(png((600, 600))) - 10)
    assert search(server, big).status_code == 200  # and once the stalled one left, a full-size one does


def test_a_client_that_drops_mid_upload_is_one_info_line(idle):
    server = idle
    for n, kind in enumerate(("image/png", MULTIPART)):
        sock = connect(server)
        sock.sendall(head("/v1/search", 500_000, kind, request_id=f"dropped-{n}") + OPENING[kind] + b"\0" * 200_000)
        eventually(lambda: in_flight(server)["in_flight"] == 1)
        sock.close()
    eventually(lambda: in_flight(server)["in_flight"] == 0)
    log = server["log"].read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
    for n in range(2):
        [line] = [line for line in log.splitlines() if f"dropped-{n}" in line]
        assert " INFO " in line and "POST /v1/search 499" in line and "closed the connection during its upload" in line


# -- JSON bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"text": "red bag", "top_k": true}', "top_k"),
        (b'{"text": "red bag", "candidates": false}', "candidates"),
        (b'{"text": "red bag", "top_k": "3"}', "top_k"),
        (b'{"text": "red bag", "top_k": 2.5}', "top_k"),
        (b'{"text": "red bag", "top_k": NaN}', "NaN"),
        (b'{"text": "red \xff\xfe bag"}', "UTF-8"),
        (b'{"text": "red \\ud800 bag"}', "UTF-8"),
        (b"[" * 20_000 + b"]" * 20_000, "nested"),
        (b'{"text": ' * 5_000 + b'"x"' + b"}" * 5_000, "nested"),
        (b'{"text": "red bag"', "not JSON"),
    ],
    ids=[
        "bool-top_k",
        "bool-candidates",
        "string-top_k",
        "float-top_k",
        "nan",
        "bad-utf8",
        "lone-surrogate",
        "deep-list",
        "deep-object",
        "cut",
    ],
)
def test_json_that_is_not_quite_json_is_422(server, body, words):
    response = httpx.post(
        f"{server['base']}/v1/search/text", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == {"error", "status", "request_id"} and words in error["error"] and "\n" not in error["error"]


def test_a_well_formed_text_query_still_answers(server):
    found = httpx.post(f"{server['base']}/v1/search/text", json={"text": "red bag", "top_k": 3}, timeout=60)
    assert found.status_code == 200 and len(found.json()["matches"]) == 3


# -- where the server's files are is none of a client's business ---------------------------------


def test_no_answer_names_the_servers_folders(server, tmp_path, cli):
    base, dam, store = server["base"], server["dam"], server["store"]
    photo = (dam / RED).read_bytes()
    answers = []

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        response = httpx.request(method, f"{base}{path}", timeout=60, **kwargs)
        answers.append(response)
        return response

    found = call("POST", "/v1/search", content=photo, headers={"Content-Type": "image/png"}).json()
    top = found["matches"][0]
    assert top["product_id"] == "RED-BAG" and top["path"] == RED.as_posix() and top["image"] == f"/v1/images/{top['point_id']}"
    assert call("GET", top["image"]).content == photo  # the URL shows the image
    call("POST", "/v1/search", files={"image": ("red.png", photo, "image/png")})
    call("POST", "/v1/search/text", json={"text": "red bag"})
    call("GET", "/v1/products/RED-BAG")
    info = call("GET", "/v1/info").json()
    assert info["store"] == "embedded store …/qdrant" and info["root"] == "dam"
    added = call("POST", "/v1/feedback", params={"product_id": "RED-BAG"}, content=photo, headers={"Content-Type": "image/png"})
    assert added.status_code == 201, added.text
    call("POST", "/v1/search", content=photo, headers={"Content-Type": "image/png"})  # a store view answers now
    call("GET", "/v1/feedback")
    call("GET", "/v1/products/RED-BAG")
    call("DELETE", f"/v1/feedback/{added.json()['id']}")
    for path in ("/v1/products/NOPE", "/v1/images/../../etc/passwd", "/v1/feedback/12345", "/readyz", "/healthz"):
        call("DELETE" if path.startswith("/v1/feedback/") else "GET", path)
    call("POST", "/v1/search", content=b"not a photo", headers={"Content-Type": "image/png"})
    call("POST", "/v1/search", params={"top_k": 0}, content=photo, headers={"Content-Type": "image/png"})
    folders = {str(dam), str(store), str(Path(dam).resolve()), str(Path(store).resolve()), str(Path(store).parent)}
    for response in answers:
        assert not any(folder in response.text for folder in folders), (response.request.url, response.text)

    # The command line still names the files: a `search image` the server answers (it holds the store).
    handed = cli("search", "image", dam / RED, "--qdrant-path", store, "--json", "--top-k", "2")
    assert handed.exit_code == 0, handed.output
    assert json.loads(handed.stdout)[0]["matches"][0]["image"] == str(dam / RED)


# -- stopping --------------------------------------------------------------------------------------


@pytest.mark.slow  # waits out the grace period
def test_an_upload_cancelled_at_shutdown_is_one_line(tmp_path, store, synced):
    """uvicorn cancels what its grace period did not finish: that is one line in the log, not a traceback."""
    log = tmp_path / "serve.log"
    port = free_port()
    with log.open("w") as err:
        process = subprocess.Popen(
            serve_argv(store, port, "--locate", "none"),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    sock = None
    try:
        wait_for_http(port)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(head("/v1/search", 500_000, request_id="stopping-1") + b"\0" * 100_000)
        eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=30).json()["uploads"]["in_flight"] == 1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if sock is not None:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text, text
    [line] = [line for line in text.splitlines() if "stopping-1" in line]
    assert " INFO " in line and "cancelled: the server is stopping" in line


def test_the_new_limits_are_options_with_environment_variables():
    done = subprocess.run(
        [sys.executable, "-m", "catalogue_cli.search", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    for option in ("--read-timeout", "CATALOGUE_READ_TIMEOUT_S", "--upload-budget-mb", "CATALOGUE_UPLOAD_BUDGET_MB"):
        assert option in done.stdout
