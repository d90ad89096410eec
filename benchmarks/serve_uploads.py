"""Stalled uploads against `search serve`: what they cost the server's memory, and whether it comes back.

    python benchmarks/serve_uploads.py --qdrant-path STORE [--clients 40] [--size-mb 24] [--stall 5]

Starts `search serve` on a copy of STORE (loopback only), then opens `--clients`
connections at once, each announcing a `--size-mb` photo, sending half of it
and stalling for `--stall` seconds before closing. Prints the server's
resident memory (RSS, from /proc) when ready, at its peak while the clients
stall, and after they have closed, and what the clients were answered
(503 refused before reading, 408 cut off by --read-timeout, none: closed by
the client first). Extra arguments after `--` go to `search serve`
(e.g. `-- --upload-budget-mb 64 --read-timeout 3`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stalled_upload(port: int, size: int, stall: float, answers: Counter, lock: threading.Lock) -> None:
    """Announce `size` bytes, send half, stall, close; count what the server answered meanwhile."""
    head = f"POST /v1/search HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\nContent-Length: {size}\r\n\r\n".encode()
    answer = "none"
    deadline = time.monotonic() + stall
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(stall)
        try:
            sock.sendall(head)
            chunk = b"\0" * 2**20
            for _ in range(size // 2 // len(chunk)):
                sock.sendall(chunk)
        except (ConnectionError, TimeoutError):
            pass  # answered and cut off, or held back, while sending: an answer may still be readable
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            reply = sock.recv(64)
            if reply.startswith(b"HTTP/1.1 "):
                answer = reply.split()[1].decode()
        except (TimeoutError, ConnectionError):
            pass  # stalled until the end with no answer
    with lock:
        answers[answer] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qdrant-path", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--size-mb", type=float, default=24)
    parser.add_argument("--stall", type=float, default=5, help="seconds each client stalls before closing")
    parser.add_argument("serve_args", nargs="*", help="after --: more options of search serve")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-uploads-"))
    store = work / "store"
    shutil.copytree(args.qdrant_path, store)
    port = free_port()
    command = [sys.executable, "-m", "catalogue_cli.search", "serve", "--qdrant-path", str(store), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--locate", "none", *args.serve_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready in 300 s")
            time.sleep(0.1)
        ready = rss_mb(server.pid)
        answers: Counter = Counter()
        lock = threading.Lock()
        size = int(args.size_mb * 2**20)
        clients = [
            threading.Thread(target=stalled_upload, args=(port, size, args.stall, answers, lock)) for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        peak = ready
        while any(c.is_alive() for c in clients):
            peak = max(peak, rss_mb(server.pid))
            time.sleep(0.05)
        time.sleep(2)  # the server notices the closed connections and lets go of their bytes
        after = rss_mb(server.pid)
        alive = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code
        print(
            f"{args.clients} clients x half of {args.size_mb:g} MB, stalling {args.stall:g} s ({' '.join(args.serve_args) or 'defaults'})"
        )
        print(f"  RSS ready   {ready:7.0f} MB")
        print(f"  RSS peak    {peak:7.0f} MB")
        print(f"  RSS after   {after:7.0f} MB   (clients closed 2 s before)")
        print(f"  answers     {dict(sorted(answers.items()))}   /healthz {alive}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
