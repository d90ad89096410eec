"""Store faults are one line and an exit code, never a traceback, and the store recovers.

Disk full and read-only mounts are real: a small tmpfs mounted for the test
(skipped where the test may not mount one). The Qdrant server cannot run
here, so its failure modes come from a small HTTP server that answers the
version check and then fails the way a sick server does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import all_points, studio_shot

RED = Path("generated") / "RED-BAG.png"


@pytest.fixture
def mount(tmp_path):
    """mount(size_mb) -> a fresh tmpfs folder; remount(folder, options) changes it; all unmounted afterwards."""
    mounted: list[Path] = []

    def make(size_mb: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return result.stderr


def test_disk_full_during_sync_stops_cleanly_and_the_next_sync_completes(cli, tmp_path, tiny_clip, mount):
    dam = tmp_path / "dam"
    manifest = tmp_path / "products.csv"
    rows = ["file,description"]
    for i in range(200):
        studio_shot(dam / f"P{i:03d}.png", (i, 255 - i, 90), size=48)
        rows.append(f"P{i:03d}.png,{'long text ' * 800}")  # 8 KB of payload per image: the disk fills fast
    manifest.write_text("\n".join(rows))
    disk = mount(256)
    store = disk / "store"
    # What creating a collection takes on this disk (the engine sets up its files), measured, then given back.
    from indexer.store import ModelSpec, open_store

    before = shutil.disk_usage(disk).free
    with open_store(path=store, create=True) as handle:
        handle.collection("probe").create([ModelSpec("probe", 16)], root="/")
        creation = before - shutil.disk_usage(disk).free
        handle.collection("probe").drop()
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(disk).free - creation - (64 + 1) * 2**20))  # the 64 MB margin and 1 MB more
    args = ("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--manifest", manifest, "--batch-size", "16")
    message = one_line_error(cli(*args), 4)
    assert "out of disk space" in message and "run the same command again" in message
    ballast.unlink()
    # (On tmpfs, opening a store fills in its sparse files: the 256 MB leave room for that and the margin.)
    written = len(all_points(str(store)))
    assert 0 < written < 200  # it stopped in the middle
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 200 - written
    assert sorted(p.payload["path"] for p in all_points(str(store))) == [f"P{i:03d}.png" for i in range(200)]


def test_read_only_store_is_one_line(synced, cli, dam, store, tmp_path, mount):
    disk = mount(200)
    shutil.copytree(store, disk / "store")
    remount(disk, "ro")
    result = cli("search", "image", dam / RED, "--qdrant-path", disk / "store")
    message = one_line_error(result, 4)
    assert "read-only" in message and "--qdrant-url" in message
    remount(disk, "rw")
    result = cli("search", "image", dam / RED, "--qdrant-path", disk / "store", "--json", "--locate", "none")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["matches"][0]["product_id"] == "RED-BAG"


def _segment_file(store: str, name: str) -> Path:
    return next(Path(store, "collections", "catalogue", "shard", "segments").rglob(name))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda store: _segment_file(store, "segment.json").write_text("{not json"), id="garbled-segment-config"),
        pytest.param(lambda store: _segment_file(store, "status.dat").write_bytes(b""), id="truncated-status-file"),
        pytest.param(
            lambda store: Path(store, "collections", "catalogue", "collection.json").write_text("{"), id="garbled-record"
        ),
    ],
)
def test_damaged_store_is_one_line_and_reindex_repairs_it(synced, cli, dam, store, tiny_clip, damage):
    damage(store)
    # As a real process: the engine's own panic report must not reach the terminal either.
    process = subprocess.run(
        [sys.executable, "-m", "catalogue_cli.search", "image", str(dam / RED), "--qdrant-path", store],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 4
    assert process.stderr.count("\n") == 1 and process.stderr.startswith("Error: "), process.stderr
    assert "--reindex" in process.stderr and "panicked" not in process.stderr
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--reindex", "--model", tiny_clip, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 16
    result = cli("search", "image", dam / RED, "--qdrant-path", store, "--json", "--locate", "none")
    assert json.loads(result.stdout)[0]["matches"][0]["product_id"] == "RED-BAG"


class _SickQdrant(BaseHTTPRequestHandler):
    """Passes the version check (GET /, GET /collections), then fails every other request."""

    mode = "error"

    def do_GET(self):
        if self.path == "/":
            return self._json({"title": "qdrant", "version": "1.20.0"})
        if self.path.startswith("/collections") and self.path.rstrip("/") == "/collections":
            return self._json({"result": {"collections": []}, "status": "ok", "time": 0})
        return self._fail()

    do_POST = do_PUT = do_DELETE = do_PATCH = lambda self: self._fail()

    def _fail(self):
        if self.mode == "drop":
            self.connection.close()  # the server goes away mid-request
            return None
        return self._json({"status": {"error": "Service internal error: something broke"}}, status=500)

    def _json(self, body: dict, status: int = 200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(params=["error", "drop"])
def sick_server(request):
    handler = type("Handler", (_SickQdrant,), {"mode": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_that_fails_after_the_version_check_is_exit_4(cli, dam, tiny_clip, sick_server):
    message = one_line_error(cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-url", sick_server), 4)
    assert f"Qdrant at {sick_server} failed while" in message
    message = one_line_error(cli("search", "image", dam / RED, "--qdrant-url", sick_server), 4)
    assert "failed while" in message


def test_credentials_in_the_server_url_never_reach_messages(cli, dam, tiny_clip):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-url", "http://admin:s3cret@127.0.0.1:9")
    message = one_line_error(result, 4)
    assert "s3cret" not in message and "***@127.0.0.1:9" in message


def test_api_key_over_plain_http_is_said_in_one_line(cli, dam, tiny_clip, monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "k")
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-url", "http://127.0.0.1:9")
    assert result.exit_code == 4
    assert result.stderr.splitlines()[0] == (
        "Warning: QDRANT_API_KEY is sent in clear over http://; use an https:// URL beyond a private network."
    )


def test_storage_settings_are_recorded_and_fixed_until_reindex(cli, dam, store, tiny_clip):
    result = cli(
        "indexer",
        "sync",
        dam,
        "--model",
        tiny_clip,
        "--qdrant-path",
        store,
        "--quantization",
        "int8",
        "--on-disk",
        "--hnsw-threshold",
        "8",
    )
    assert result.exit_code == 0, result.output
    info = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)
    assert info["storage"] == {"quantization": "int8", "on_disk": True, "hnsw_threshold": 8}
    result = cli("search", "image", dam / RED, "--qdrant-path", store, "--json", "--locate", "none")
    assert json.loads(result.stdout)[0]["matches"][0]["product_id"] == "RED-BAG"  # quantized, rescored: same answer
    message = one_line_error(cli("indexer", "sync", dam, "--qdrant-path", store, "--quantization", "none"), 2)
    assert "--reindex" in message
    assert cli("indexer", "sync", dam, "--qdrant-path", store, "--on-disk").exit_code == 0  # asks for what it has
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--quantization", "none", "--reindex")
    assert result.exit_code == 0
    info = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)
    assert info["storage"] == {"quantization": "none", "on_disk": True, "hnsw_threshold": 8}  # the rest kept


def test_search_on_a_path_with_no_store_creates_nothing(cli, dam, tmp_path):
    missing = tmp_path / "no-store-here"
    result = cli("search", "image", dam / RED, "--qdrant-path", missing)
    assert "indexer sync" in one_line_error(result, 3)
    assert not missing.exists()


def test_interrupted_index_build_is_finished_by_the_next_sync(synced, cli, dam, store):
    pending = Path(store, "collections", "catalogue", "index.pending")
    assert not pending.exists()  # the sync built its index
    pending.touch()  # as a sync killed before its index build leaves it
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["unchanged"] == 16
    assert not pending.exists()
