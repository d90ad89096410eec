"""Load on `search serve`, against the in-process search in the same run: loopback only, bounded, stops by itself.

    python benchmarks/serve_load.py ../shared/data/store-photos-dev --qdrant-path STORE

Prints, on the given photos and the collection's models:
  in-process    median seconds per photo of the service's own search, called directly (same models,
                threads and batching as the server; `--rounds` passes over the photos), measured
                before and after the HTTP runs (the mean of the two: the machine drifts)
  first         the first HTTP search once /readyz says ready, against the same photo's warm median
  1 client      HTTP p50 / p95 and searches/s, one request at a time (`--rounds` passes over the photos)
  8 clients     searches/s with 8 concurrent clients (`--requests` in all), and any errors
  overload      a burst of workers + queue + 24 simultaneous searches: how many got 503, and
                whether /healthz and a search still answer right after
The ratios are the targets' (HTTP p50 / in-process, 8-client / 1-client throughput, first / warm).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(store: Path, photos: list[tuple[str, bytes]], collection: str, rounds: int, workers: int, queue: int) -> float:
    """Median seconds per photo through the service's own pipeline (the same models, threads and batching
    as the server, warmed up the same way), called directly: what HTTP adds is the rest."""
    from catalogue_cli.options import model_loading
    from search.options import SearchOptions
    from search.serve.service import ServeConfig, Service

    service = Service(
        ServeConfig(
            qdrant_path=str(store),
            collection=collection,
            model_loading=model_loading("cpu", "auto"),
            workers=workers,
            queue=queue,
        )
    )
    service.load()
    if service.failure is not None:
        raise SystemExit(f"cannot load: {service.failure}")
    times = []
    try:
        for _ in range(rounds):
            for name, data in photos:
                t = time.perf_counter()
                service.search_upload(data, name, SearchOptions(), None)
                times.append(time.perf_counter() - t)
    finally:
        service.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path)
    parser.add_argument(
        "--qdrant-path", type=Path, required=True, help="a synced embedded store (copied: the original is not touched)"
    )
    parser.add_argument("--collection", default="catalogue")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos with one client")
    parser.add_argument("--requests", type=int, default=64, help="searches sent by the 8 concurrent clients")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--queue", type=int, default=16)
    args = parser.parse_args()

    import httpx

    from indexer.images import IMAGE_SUFFIXES

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    bodies = [(p.name, p.read_bytes()) for p in photos]
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    store = work / "store"
    shutil.copytree(args.qdrant_path, store)
    before = in_process(store, bodies, args.collection, args.rounds, args.workers, args.queue)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "catalogue_cli.search",
            "serve",
            "--qdrant-path",
            str(store),
            "--collection",
            args.collection,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--queue",
            str(args.queue),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(timeout=120)

    def search(item) -> tuple[int, float]:
        name, data = item
        t = time.perf_counter()
        status = client.post(f"{base}/v1/search", files={"image": (name, data, "image/jpeg")}).status_code
        return status, time.perf_counter() - t

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if client.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("the server did not become ready in 300 s")
        first_status, first = search(bodies[0])

        latencies, errors = [], int(first_status != 200)
        t = time.perf_counter()
        for _ in range(args.rounds):
            for item in bodies:
                status, seconds = search(item)
                errors += status != 200
                latencies.append(seconds)
        one_client = len(latencies) / (time.perf_counter() - t)
        warm = statistics.median(latencies)
        warm_first = statistics.median(latencies[:: len(bodies)])  # the first photo, once warm
        p95 = statistics.quantiles(latencies, n=20)[-1]

        items = [bodies[i % len(bodies)] for i in range(args.requests)]
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(search, items))
        eight_clients = len(items) / (time.perf_counter() - t)
        errors += sum(status != 200 for status, _ in results)

        burst = args.workers + args.queue + 24
        with ThreadPoolExecutor(burst) as pool:
            statuses = [status for status, _ in pool.map(search, [bodies[i % len(bodies)] for i in range(burst)])]
        refused = statuses.count(503)
        others = len(statuses) - refused - statuses.count(200)
        healthy = client.get(f"{base}/healthz").status_code == 200 and search(bodies[0])[0] == 200
        server.terminate()
        server.wait(60)
        # Measured before and after the HTTP runs: this shared machine drifts, the mean of the two is fairer.
        after = in_process(store, bodies, args.collection, args.rounds, args.workers, args.queue)
        local = (before + after) / 2
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(60)
        client.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{len(photos)} photos, models of {args.qdrant_path}, workers {args.workers}, queue {args.queue}")
    print(
        f"in-process search       {local * 1000:7.0f} ms per photo (median; {before * 1000:.0f} before the HTTP runs, {after * 1000:.0f} after)"
    )
    print(f"first HTTP after ready  {first * 1000:7.0f} ms   x{first / warm_first:.2f} the same photo warm (target <= 1.2)")
    print(
        f"1 client                p50 {warm * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms   x{warm / local:.2f} in-process (target <= 1.15); "
        f"{one_client:.2f} searches/s"
    )
    print(
        f"8 clients               {eight_clients:.2f} searches/s   x{eight_clients / one_client:.2f} one client (target >= 1.3)"
    )
    print(f"errors below the bound  {errors}")
    print(
        f"overload burst of {burst}   {refused} refused with 503, {statuses.count(200)} answered, {others} other; "
        f"healthy afterwards: {'yes' if healthy else 'NO'}"
    )


if __name__ == "__main__":
    main()
