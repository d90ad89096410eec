"""Stores written by the previous embedded backend (qdrant-client's local mode), converted without re-encoding.

Local mode kept `meta.json` and `collection/NAME/storage.sqlite` in the store
folder. Such a store is detected when a collection is opened, and refused
with the command that converts it: `indexer migrate`. Conversion reads every
point (vectors and payloads) through qdrant-client, writes them into a new
embedded collection under a temporary name, builds its index, then renames
it into place, so a conversion killed at any moment leaves the old store
intact and can simply be run again. The old files are kept in
`legacy-local-mode/` until you delete them.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import StoreUnavailable, first_line
from indexer.store.schema import METADATA_KEY, ModelSpec, Point, StorageSettings

LEGACY_META = "meta.json"
LEGACY_COLLECTIONS = "collection"
BACKUP = "legacy-local-mode"
BATCH = 512


def legacy_collections(root: Path) -> list[str]:
    """Collections of a local-mode store at `root` ([] when there is none)."""
    folder = root / LEGACY_COLLECTIONS
    if not (root / LEGACY_META).is_file() or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "storage.sqlite").is_file())


def refuse_legacy(root: Path, name: str) -> None:
    if name in legacy_collections(root):
        raise StoreUnavailable(
            f"{root} holds collection {name!r} written by the previous embedded engine (qdrant-client local mode); "
            f"convert it, without re-encoding anything: indexer migrate --qdrant-path {root}"
        )


@dataclass
class Migrated:
    collection: str
    points: int
    models: list[str]


def migrate(store, progress: Callable[[int], object] | None = None) -> list[Migrated]:
    """Convert every local-mode collection of an open embedded `store`; the old files move to `legacy-local-mode/`."""
    root: Path = store.root
    names = legacy_collections(root)
    if not names:
        return []
    try:
        from qdrant_client import QdrantClient
    except ImportError:  # pragma: no cover - qdrant-client is a dependency
        raise StoreUnavailable("converting a local-mode store needs qdrant-client: pip install qdrant-client") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # local mode warns about large collections and lock files
        try:
            client = QdrantClient(path=str(root))
        except Exception as exc:  # noqa: BLE001 - a locked or damaged old store
            raise StoreUnavailable(f"cannot open the old store at {root}: {first_line(exc)}") from None
    done = []
    try:
        for name in names:
            done.append(_convert(client, store, name, progress))
    finally:
        client.close()
    backup = root / BACKUP
    backup.mkdir(exist_ok=True)
    for item in (LEGACY_META, LEGACY_COLLECTIONS, ".lock"):
        if (root / item).exists():
            os.replace(root / item, backup / item)
    return done


def _convert(client, store, name: str, progress) -> Migrated:
    info = client.get_collection(name)
    record = dict((info.config.metadata or {}).get(METADATA_KEY) or {})
    if not record.get("models"):
        raise StoreUnavailable(
            f"collection {name!r} in {store.root} was not made by catalogue-indexer (no model record); nothing was converted"
        )
    models = [ModelSpec.from_dict(m) for m in record["models"]]
    record.setdefault("storage", StorageSettings().to_dict())
    staging = f".{name}.migrating"
    target = store.collection(staging)
    target.drop()  # what a killed conversion left behind
    target.create(models, root=record.get("root", ""), settings=StorageSettings.from_dict(record["storage"]))
    target.update_metadata(**record)
    names = [m.vector for m in models]
    offset, copied = None, 0
    while True:
        points, offset = client.scroll(name, limit=BATCH, offset=offset, with_payload=True, with_vectors=names)
        target.upsert([Point(str(p.id), {k: p.vector[k] for k in names}, p.payload or {}) for p in points])
        copied += len(points)
        if progress:
            progress(len(points))
        if offset is None:
            break
    target.build_index()
    if target.count() != client.count(name, exact=True).count:
        raise StoreUnavailable(
            f"converting collection {name!r} lost points; the old store is untouched, run indexer migrate again"
        )
    store.release(staging)
    final = store.folder(name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(store.folder(staging), final)
    return Migrated(name, copied, [m.model for m in models])
