"""A receipt of the last complete sync into an embedded store, so a no-change re-sync need not open it.

Opening an embedded store imports qdrant-client and loads every point into
memory: about 2 s for the sample catalogue, which is all a re-sync of an
unchanged folder would cost. After a sync that left the collection mirroring
the folder, a receipt records a digest of the folder listing (path, size,
mtime, product id, category, metadata), the DAM root, the models, this tool's
version, and the size and mtime of the store's own files. When the next sync
finds the same listing and the store's files untouched, neither side can have
changed, and every image is reported unchanged without opening the store.
Anything else (another model asked for, --reindex, a server, a sync that
failed on some files, a receipt missing or unreadable) takes the full path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from indexer.scan import SourceImage

_FOLDER = ".catalogue-indexer"


def unchanged_models(store: Path, collection: str, root: Path, sources: Sequence[SourceImage], models: list[str] | None) -> list[str] | None:
    """The collection's models if the receipt proves nothing changed since the last sync, else None.

    `models` are the model ids asked for (None: whatever the collection holds).
    """
    try:
        receipt = json.loads(_path(store, collection).read_text())
    except (OSError, ValueError):
        return None
    expected = _fingerprint(store, collection, root, sources)
    if expected is None or receipt.get("fingerprint") != expected:
        return None
    if models is not None and models != receipt.get("models"):
        return None
    return list(receipt["models"])


def write(store: Path, collection: str, root: Path, sources: Sequence[SourceImage], models: list[str]) -> None:
    """Record a complete sync; call it after the store is closed, so its files are final."""
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


def _fingerprint(store: Path, collection: str, root: Path, sources: Sequence[SourceImage]) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("catalogue-indexer")
    except PackageNotFoundError:
        tool = "unknown"
    files = []
    for relative in ("meta.json", f"collection/{collection}/storage.sqlite"):
        try:
            stat = (store / relative).stat()
        except OSError:
            return None
        files.append((relative, stat.st_size, stat.st_mtime_ns))
    listing = [(s.relative, s.size, s.mtime_ns, s.product_id, s.category, s.meta) for s in sources]
    payload = json.dumps([tool, str(root.resolve()), collection, files, listing], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
