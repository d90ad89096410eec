"""Kill -9 at any moment, during the upserts or the index build: the next sync converges, exactly."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import all_points, eventually, open_store, studio_shot

from indexer.store import point_id

IMAGES = 120


def sync_command(dam, store, model, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "catalogue_cli.indexer",
        "sync",
        str(dam),
        "--model",
        model,
        "--qdrant-path",
        str(store),
        *extra,
    ]


def stored_points(store) -> int:
    """Points in the collection now (0 when the collection was not made yet)."""
    with open_store(store) as handle:
        return handle.collection("catalogue").count()


def assert_mirrors(store, expected: set[str]) -> None:
    points = all_points(store)
    paths = [p.payload["path"] for p in points]
    assert sorted(paths) == sorted(expected)  # nothing missing, no duplicates, nothing stale
    assert all(p.id == point_id(p.payload["path"]) for p in points)


@pytest.mark.slow
def test_sync_killed_at_random_moments_converges(tmp_path, tiny_clip, cli):
    dam = tmp_path / "dam"
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        studio_shot(dam / f"P{i:03d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)), shape=("ellipse", "rectangle")[i % 2])
    expected = {f"P{i:03d}.png" for i in range(IMAGES)}
    timing = random.Random(11)
    delay, partial = 3.0, 0
    for attempt in range(8):
        store = tmp_path / f"qdrant-{attempt}"
        process = subprocess.Popen(
            sync_command(dam, store, tiny_clip, "--batch-size", "2", "--workers", "1", "-q"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay * timing.uniform(0.8, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        written = stored_points(store) if store.exists() else 0
        if written == 0:
            delay *= 1.6  # killed before the first write: aim later
        elif written >= IMAGES:
            delay *= 0.6  # finished before the kill: aim earlier
        else:
            partial += 1
        result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["added"] + report["unchanged"] == IMAGES
        assert_mirrors(store, expected)
        if partial >= 2:
            break
    assert partial >= 1, "no kill landed in the middle of the upserts"

    # The last store was killed mid-way and finished; now the folder changes: converge again, vectors fresh.
    studio_shot(dam / "P000.png", (1, 2, 3))
    (dam / "P119.png").unlink()
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json")
    assert result.exit_code == 0
    assert_mirrors(store, expected - {"P119.png"})
    from indexer.encoders import load_encoder
    from indexer.images import load_rgb
    from indexer.store import vector_name

    encoder = load_encoder(tiny_clip, device="cpu")
    by_path = {p.payload["path"]: p for p in all_points(store, with_vectors=True)}
    for name in ("P000.png", "P005.png", "P118.png"):
        fresh = encoder.embed([load_rgb(dam / name)])[0]
        assert np.allclose(by_path[name].vector[vector_name(tiny_clip)], fresh, atol=1e-4)


def test_sync_killed_while_building_the_index_converges(tmp_path, tiny_clip, cli):
    dam = tmp_path / "dam"
    rng = np.random.default_rng(1)
    for i in range(60):
        studio_shot(dam / f"Q{i:03d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)))
    timing = random.Random(5)
    for attempt in range(3):
        store = tmp_path / f"qdrant-{attempt}"
        # A low threshold makes this small collection get an HNSW graph, built at the end of the sync.
        process = subprocess.Popen(
            sync_command(dam, store, tiny_clip, "--hnsw-threshold", "10"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in process.stderr:
            if "Building the search index" in line:
                time.sleep(timing.uniform(0, 0.05))
                break
        process.send_signal(signal.SIGKILL)
        process.communicate()
        result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--json")
        assert result.exit_code == 0, result.output
        assert_mirrors(store, {f"Q{i:03d}.png" for i in range(60)})


@pytest.mark.slow
def test_store_killed_mid_index_build_reopens_whole(tmp_path):
    """The engine's own index build (here 20,000 points, seconds of work) killed at random moments."""
    script = tmp_path / "build.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from indexer.store import open_store, ModelSpec, Point, StorageSettings, point_id\n"
        "store = open_store(path=sys.argv[1], create=True)\n"
        "catalogue = store.collection('catalogue')\n"
        "catalogue.create([ModelSpec('m', 64)], root='/', settings=StorageSettings(hnsw_threshold=1000))\n"
        "rng = np.random.default_rng(0)\n"
        "for start in range(0, 20000, 2000):\n"
        "    catalogue.upsert([Point(point_id(str(i)), {'m': rng.normal(size=64)}, {'path': str(i), 'product_id': str(i)}) for i in range(start, start + 2000)])\n"
        "print('building', flush=True)\n"
        "catalogue.build_index()\n"
        "print('built', flush=True)\n"
    )
    timing = random.Random(3)
    for attempt in range(3):
        store = tmp_path / f"store-{attempt}"
        process = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "building"
        time.sleep(timing.uniform(0.05, 1.0))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        with open_store(store) as handle:
            catalogue = handle.collection("catalogue")
            assert catalogue.count() == 20000
            catalogue.build_index()
            probe = np.random.default_rng(0).normal(size=64)  # the first point's own vector
            assert catalogue.nearest(probe, "m", 1)[0].id == point_id("0")
        shutil.rmtree(store)


def test_preparing_processes_leave_with_a_sync_killed_9(tmp_path, tiny_clip):
    """A sync of a big folder prepares images in worker processes; kill -9 of the sync must not
    leave them waiting forever (nothing tells them, and no end-of-file reaches them)."""
    from indexer.prepare import PROCESSES_FROM

    dam = tmp_path / "dam"
    for i in range(2 * PROCESSES_FROM):  # long enough to be caught running on a fast machine too
        studio_shot(dam / f"P{i:03d}.png", (i % 256, 90, 200 - i % 200), size=64)
    process = subprocess.Popen(
        sync_command(dam, tmp_path / "qdrant", tiny_clip, "--batch-size", "2", "--workers", "2", "-q"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def two_workers() -> set[int]:
        assert process.poll() is None, "the sync finished or failed before its workers could be seen"
        workers = {pid for pid in _children(process.pid) if b"multiprocessing.spawn" in _command_line(pid)}
        return workers if len(workers) >= 2 else set()

    workers = eventually(two_workers, timeout=120, awaited="the sync's two preparing worker processes")
    assert len(workers) == 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    eventually(
        lambda: not any(_alive(pid) for pid in workers),
        timeout=10,
        awaited=f"worker processes {sorted(workers)} to leave with the killed sync",
    )


def _children(parent: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.add(int(stat.parent.name))
    return found


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing
