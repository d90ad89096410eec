"""A receipt of the last complete sync into an embedded store, so a no-change re-sync need not open it.

Opening an embedded store imports qdrant-client and loads every point into
memory: about 2 s for the sample catalogue, which is all a re-sync of an
unchanged folder would cost. After a sync that left the collection mirroring
the folder, a receipt records a digest of the folder listing (path, size,
mtime, product id, category, metadata), the DAM root, the models, this tool's
version, and a fingerprint of the store's own files. When the next sync
finds the same listing and the store's files untouched, neither side can have
changed, and every image is reported unchanged without opening the store.
Anything else (another model asked for, --reindex, a server, a sync that
failed on some files, a receipt missing or unreadable, the store held by
another process) takes the full path.

The store's files are what qdrant-client's local mode persists to: points in
`collection/NAME/storage.sqlite` (rollback journal, so every commit bumps the
SQLite header's change counter), collection config and metadata in
`meta.json`. Opening and reading the store write neither.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from indexer.scan import SourceImage
from indexer.store import SCHEMA_VERSION

_FOLDER = ".catalogue-indexer"
_FORMAT = 1  # bump when what the fingerprint covers changes


def unchanged_models(store: Path, collection: str, root: Path, sources: Sequence[SourceImage], models: list[str] | None) -> list[str] | None:
    """The collection's models if the receipt proves nothing changed since the last sync, else None.

    `models` are the model ids asked for (None: whatever the collection holds).
    """
    try:
        receipt = json.loads(_path(store, collection).read_text())
    except (OSError, ValueError):
        return None
    recorded = receipt.get("models") if isinstance(receipt, dict) else None
    if not (isinstance(recorded, list) and recorded and all(isinstance(m, str) for m in recorded)):
        return None
    if models is not None and models != recorded:
        return None
    with _store_lock(store) as ours:
        if not ours:
            return None  # another process has the store: the full path says so, or waits its turn
        fingerprint = _fingerprint(store, collection, root, sources)
        if fingerprint is None or fingerprint != receipt.get("fingerprint"):
            return None
    return recorded


def write(store: Path, collection: str, root: Path, sources: Sequence[SourceImage], models: list[str]) -> None:
    """Record a complete sync; call it while this process still holds the store, after its last write."""
    fingerprint = _fingerprint(store, collection, root, sources)
    if fingerprint is None:
        return
    path = _path(store, collection)
    try:
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({"fingerprint": fingerprint, "models": models}))
        os.replace(partial, path)  # a reader sees the old receipt or the new one, never half of one
    except OSError:
        pass  # only a speed-up: the next sync takes the full path


def _path(store: Path, collection: str) -> Path:
    return store / _FOLDER / f"sync-{collection}.json"


@contextmanager
def _store_lock(store: Path) -> Iterator[bool]:
    """The lock qdrant-client's local mode takes on the store, without waiting: False if another process has it."""
    import portalocker

    try:
        handle = open(store / ".lock", "r+")  # noqa: SIM115 - held across the yield
    except OSError:
        yield False
        return
    try:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            yield False
            return
        try:
            yield True
        finally:
            portalocker.unlock(handle)
    finally:
        handle.close()


def _fingerprint(store: Path, collection: str, root: Path, sources: Sequence[SourceImage]) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("catalogue-indexer")
    except PackageNotFoundError:
        tool = "unknown"
    try:
        meta = hashlib.sha256((store / "meta.json").read_bytes()).hexdigest()
        points = store / "collection" / collection / "storage.sqlite"
        stat = points.stat()
        with open(points, "rb") as handle:
            change_counter = handle.read(100)[24:28].hex()  # SQLite header: bumped by every commit
    except OSError:
        return None
    files = [meta, stat.st_size, stat.st_mtime_ns, change_counter]
    listing = [(s.relative, s.size, s.mtime_ns, s.product_id, s.category, s.meta) for s in sources]
    payload = json.dumps(
        [_FORMAT, SCHEMA_VERSION, tool, str(root.resolve()), collection, files, listing], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()
