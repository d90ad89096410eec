"""Where a build's memory goes, with qdrant-edge-py alone (no project code).

    python benchmarks/edge_build_memory.py --size 300000
    python benchmarks/edge_build_memory.py --size 300000 --max-segment-mb 256 --hnsw-memory cold

Creates one shard as the catalogue store does (512-d cosine, int8 scalar
quantization kept in RAM, original vectors on disk, HNSW m=16 ef=100), upserts
clustered unit vectors in batches of 256 with a small payload, then runs the
optimizer (`EdgeShard.optimize`), as `indexer sync` ends. A thread samples
/proc/self/status every 10 ms and prints, per phase, the peak of:
  anon   RssAnon: the process's own pages (heap, graph under construction)
  file   RssFile: pages of memory-mapped files; the kernel drops them under
         pressure and reads them again, so they are not memory the build needs
  hwm    VmHWM: what ru_maxrss reports, anon + file at their worst moment
Each option changes one engine setting, to find the one that bounds the peak.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIM = 512
FAMILIES = 2000
BATCH = 256


class Sampler(threading.Thread):
    """Peaks of RssAnon / RssFile / VmHWM of another process, per phase it announces on its stdout.

    It samples from outside: the engine's calls hold the GIL, so a thread inside the build would not run
    while the optimizer does.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.running = True
        self.mapped_at = 0.0

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.01)

    def sample(self) -> None:
        now = {}
        try:
            for line in self.status.read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM"):
                    now[key] = int(value.split()[0]) // 1024
        except OSError:
            return  # the process has ended
        if len(now) < 3:
            return
        peak = self.peaks.setdefault(self.phase, {"anon": 0, "file": 0, "hwm": 0})
        peak["anon"] = max(peak["anon"], now["RssAnon"])
        peak["file"] = max(peak["file"], now["RssFile"])
        peak["hwm"] = now["VmHWM"]
        if now["RssFile"] >= peak["file"] and time.monotonic() - self.mapped_at > 1.0:
            self.mapped_at = time.monotonic()  # which files those pages belong to, at most once a second
            peak["files"] = self.mapped_files()

    def mapped_files(self) -> dict[str, int]:
        """Resident MB per mapped file (by its name in the shard), the largest first."""
        sizes: dict[str, int] = {}
        name = None
        try:
            for line in self.status.with_name("smaps").read_text().splitlines():
                fields = line.split()
                if fields and fields[0][0] in "0123456789abcdef" and "-" in fields[0]:
                    name = "/".join(fields[5].split("/")[-2:]) if len(fields) > 5 and fields[5].startswith("/tmp") else None
                elif name and fields[0] == "Rss:":
                    sizes[name] = sizes.get(name, 0) + int(fields[1]) // 1024
        except OSError:
            return {}
        return dict(sorted(((k, v) for k, v in sizes.items() if v >= 5), key=lambda kv: -kv[1])[:12])


def vectors(start: int, count: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(start)
    points = centres[(np.arange(start, start + count) * 7919) % FAMILIES] + 0.7 * rng.normal(size=(count, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def config(args):
    import qdrant_edge as qe

    memory = {"cold": qe.Memory.Cold, "cached": qe.Memory.Cached, None: None}
    kb = 10_000 * DIM * 4 // 1024  # the project's HNSW threshold: 10,000 points
    return qe.EdgeConfig(
        vectors={"v": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine, on_disk=True)},
        hnsw_config=qe.HnswIndexConfig(
            m=16, ef_construct=100, full_scan_threshold=kb, max_indexing_threads=args.threads, memory=memory[args.hnsw_memory]
        ),
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True),
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=kb,
            max_segment_size=args.max_segment_mb * 1024 if args.max_segment_mb else None,
            default_segment_number=args.segments,
        ),
        payload_memory=memory[args.payload_memory],
        wal_enabled=False if args.no_wal else None,
    )


def build(args) -> None:
    """The build itself, in the child process: it prints each phase as it starts, then the phases' seconds."""
    import qdrant_edge as qe

    folder = Path(tempfile.mkdtemp(prefix="edge-build-", dir=args.workdir))
    centres = np.random.default_rng(0).normal(size=(FAMILIES, DIM)).astype(np.float32)
    seconds = {}
    try:
        shard = qe.EdgeShard.create(str(folder / "shard"), config(args))
        print("phase upsert", flush=True)
        t = time.perf_counter()
        for start in range(0, args.size, BATCH):
            block = vectors(start, min(BATCH, args.size - start), centres)
            points = [
                qe.Point(id=start + j, vector={"v": v.tolist()}, payload={"product_id": f"P{(start + j) % FAMILIES:05d}"})
                for j, v in enumerate(block)
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
            if args.optimize_every and (start + BATCH) % args.optimize_every < BATCH:
                shard.optimize()
        shard.flush()
        seconds["upsert"] = round(time.perf_counter() - t, 1)
        print("phase optimize", flush=True)
        t = time.perf_counter()
        shard.optimize()
        shard.flush()
        seconds["optimize"] = round(time.perf_counter() - t, 1)
        print("phase end", flush=True)
        time.sleep(0.2)
        shard.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("seconds " + json.dumps(seconds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=300_000)
    parser.add_argument("--max-segment-mb", type=int, default=None, help="optimizer max_segment_size (default: engine's)")
    parser.add_argument("--segments", type=int, default=None, help="optimizer default_segment_number")
    parser.add_argument("--hnsw-memory", choices=["cold", "cached"], default=None)
    parser.add_argument("--payload-memory", choices=["cold", "cached"], default=None)
    parser.add_argument("--threads", type=int, default=0, help="HNSW max_indexing_threads (0: the engine's choice)")
    parser.add_argument("--optimize-every", type=int, default=0, help="also optimize every N points while upserting")
    parser.add_argument("--no-wal", action="store_true", help="no write-ahead log (to attribute its pages)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        build(args)
        return
    child = subprocess.Popen([sys.executable, __file__, "--child", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
    sampler = Sampler(child.pid)
    sampler.start()
    seconds = {}
    for line in child.stdout:
        word, _, rest = line.strip().partition(" ")
        if word == "phase":
            sampler.sample()
            sampler.phase = rest
        elif word == "seconds":
            seconds = json.loads(rest)
    sampler.running = False
    if child.wait() != 0:
        raise SystemExit("the build failed")
    options = {k: v for k, v in vars(args).items() if k not in ("workdir", "child") and v not in (None, False, 0)}
    print(json.dumps({"options": options, "seconds": seconds, "peak_mb": sampler.peaks}))


if __name__ == "__main__":
    main()
