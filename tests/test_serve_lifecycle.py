"""`search serve` as a process: it stops cleanly and in bounded time, and says why it cannot start.

Searches are made slow by a real configuration, not a hook: one worker, a long queue, and a
micro-batch that waits 100 ms for company that never comes (one worker embeds alone), so each
search takes at least 100 ms and a burst of them queues for seconds.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import eventually, free_port, serve_argv, wait_for_http

RED = Path("generated") / "RED-BAG.png"
BURST = 80  # searches of at least 100 ms each, one at a time: longer than the 5 s grace
SLOW = ["--workers", "1", "--queue", str(BURST), "--max-batch", "512", "--batch-wait-ms", "100"]
#: How long a stop may take at most: the grace, plus the 10 s the README allows past it, plus slack for a loaded machine.
STOP_DEADLINE = 5 + 10 + 15


def start(store: str, port: int, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        serve_argv(store, port, "--locate", "none", *options),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def burst(port: int, photo: bytes, count: int) -> tuple[list, threading.Event, list[threading.Thread], object]:
    """`count` searches at once, each in its own thread; the event is set when the first answer came.
    The caller closes the client (the last item) once the threads are done."""
    import httpx

    answers: list = [None] * count
    first = threading.Event()
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=count + 4))

    def search(i: int) -> None:
        try:
            answers[i] = client.post(f"http://127.0.0.1:{port}/v1/search", files={"image": ("r.png", photo, "image/png")})
        except httpx.HTTPError as exc:
            answers[i] = exc
        first.set()

    threads = [threading.Thread(target=search, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return answers, first, threads, client


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=60)[1]


@pytest.mark.parametrize("grace", [None, "0"], ids=["default-grace", "no-grace"])
def test_a_stop_answers_every_search_and_exits_0_in_bounded_time(synced, store, dam, grace):
    """Waiting searches get 503 "shutting down" at once, running ones finish (or get 503 when the grace is
    over: with no grace, the one waiting on its micro-batch); none gets a 500 and the process ends, exit 0."""
    port = free_port()
    process = start(store, port, *SLOW, *(["--stop-grace", grace] if grace else []))
    client = None
    try:
        wait_for_http(port)
        answers, first, threads, client = burst(port, (dam / RED).read_bytes(), BURST)
        assert first.wait(60)  # the server is working through the burst: the rest are queued
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_DEADLINE)
        for thread in threads:
            thread.join(30)
    finally:
        err = stop(process)
        if client is not None:
            client.close()
    assert code == 0, err
    statuses = [getattr(a, "status_code", repr(a)) for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    refused = [a for a in answers if a.status_code == 503]
    assert refused, statuses  # queued behind the running search when the signal came
    for answer in refused:
        body = answer.json()
        assert "shutting down" in body["error"] and body["status"] == 503 and answer.headers["Retry-After"]
    assert "Traceback" not in err


@pytest.mark.parametrize("stopper", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_second_signal_stops_at_once(synced, store, dam, stopper):
    """The first signal waits for a client still sending its photo (up to the grace); a second one does not wait."""
    port = free_port()
    process = start(store, port)
    upload = socket.socket()
    try:
        wait_for_http(port)
        upload.connect(("127.0.0.1", port))
        upload.sendall(
            f"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {10**6}\r\n\r\n".encode()
            + b"\0" * 1000
        )  # ...and the rest never comes
        time.sleep(0.5)
        process.send_signal(stopper)
        time.sleep(0.5)
        assert process.poll() is None  # still waiting for the upload
        process.send_signal(stopper)
        code = process.wait(timeout=STOP_DEADLINE)
    finally:
        upload.close()
        err = stop(process)
    assert code == 128 + stopper, err  # like a death by that signal: work in flight was dropped
    assert err.strip().splitlines()[-1].startswith("Stopped at once")


def test_a_port_in_use_is_exit_4_in_one_line(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "catalogue_cli.search", "serve", "--qdrant-path", str(tmp_path / "none"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use by another process; stop it, or choose another --port"
    ]


@pytest.mark.parametrize(
    ("host", "words"),
    [("192.0.2.1", "not an address of this machine"), ("no-such-host.invalid", "unknown host")],
    ids=["foreign-address", "unknown-name"],
)
def test_a_host_that_cannot_be_bound_is_exit_2_in_one_line(tmp_path, host, words):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "catalogue_cli.search",
            "serve",
            "--qdrant-path",
            str(tmp_path / "none"),
            "--host",
            host,
            "--port",
            "8000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: --host {host}: {words}")


def test_a_stop_while_watch_indexes_a_new_store_ends_the_sync_and_the_next_one_finishes(tmp_path, tiny_clip, cli):
    """`--watch` on a new store indexes the folder before serving; a stop then ends that sync between batches
    (no closing of the store under it, no traceback), and what it wrote stays for the next sync."""
    import httpx
    from conftest import studio_shot

    dam = tmp_path / "dam"
    for i in range(600):
        studio_shot(dam / f"P{i:04d}.png", (i % 250, (7 * i) % 250, (13 * i) % 250), size=96)
    store = str(tmp_path / "store")
    port = free_port()
    process = start(store, port, "--watch", str(dam), "--model", tiny_clip)
    try:
        # until the sync has made the collection and is writing to it
        eventually((Path(store) / "collections" / "catalogue").exists, timeout=120)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503  # still indexing
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_DEADLINE)
    finally:
        err = stop(process)
    assert code == 0, err
    assert "Traceback" not in err and "loading failed" not in err, err
    finished = cli("indexer", "sync", dam, "--qdrant-path", store, "--model", tiny_clip, "--json")
    assert finished.exit_code == 0, finished.output
    report = json.loads(finished.stdout)
    assert report["added"] < 600  # the first sync's points stayed
