"""A sync killed at any moment converges when run again: no duplicates, nothing missing, nothing stale."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import all_points, studio_shot

from indexer.store import point_id


def stored_rows(store: str) -> int:
    """Points written so far, read from the embedded store's sqlite file (the CLI holds the store lock)."""
    db = Path(store) / "collection" / "catalogue" / "storage.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as connection:
            return connection.execute("SELECT count(*) FROM points").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sync_killed_midway_then_rerun_converges(tmp_path, store, tiny_clip, cli):
    dam = tmp_path / "dam"
    rng = np.random.default_rng(0)
    for i in range(120):
        studio_shot(dam / f"P{i:03d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)), shape=("ellipse", "rectangle")[i % 2])
    command = [
        sys.executable, "-m", "indexer.cli", "sync", str(dam), "--model", tiny_clip,
        "--qdrant-path", store, "--batch-size", "2", "--workers", "1", "-q",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while stored_rows(store) < 10 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = stored_rows(store)
    assert 10 <= written < 120, f"the kill should land mid-sync, {written} points were written"

    # Meanwhile the folder changes: one file replaced, one removed.
    studio_shot(dam / "P000.png", (1, 2, 3))
    (dam / "P119.png").unlink()
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] + report["updated"] + report["unchanged"] == 119

    points = all_points(store, with_vectors=True)
    paths = sorted(p.payload["path"] for p in points)
    assert paths == sorted(f"P{i:03d}.png" for i in range(119))  # nothing missing, no duplicates, P119 gone
    assert all(str(p.id) == point_id(p.payload["path"]) for p in points)
    # Nothing stale: every stored vector is what the model gives for the file as it is now.
    from indexer.encoders import load_encoder
    from indexer.images import load_rgb
    from indexer.store import vector_name

    encoder = load_encoder(tiny_clip, device="cpu")
    by_path = {p.payload["path"]: p for p in points}
    for name in ("P000.png", "P005.png", "P118.png"):
        fresh = encoder.embed([load_rgb(dam / name)])[0]
        assert np.allclose(by_path[name].vector[vector_name(tiny_clip)], fresh, atol=1e-4)
