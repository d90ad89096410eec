"""The one gateway to Qdrant: nothing else in this project imports qdrant_client or qdrant_edge.

    store = open_store(path=...)        # the embedded engine (Qdrant Edge), the default
    store = open_store(url=...)         # a Qdrant server
    catalogue = store.collection("catalogue")

Both backends answer the same `Catalogue` interface (catalogue.py) over the
same schema (schema.py, the contract other services read). Where they
differ (one process at a time, background indexing) is said in each backend
module and in the README.
"""

from __future__ import annotations

from pathlib import Path

from indexer import settings
from indexer.store.catalogue import Catalogue
from indexer.store.schema import (
    DEFAULT_COLLECTION,
    DEFAULT_HNSW_THRESHOLD,
    QUANTIZATIONS,
    Filters,
    Hit,
    IndexedImage,
    ModelSpec,
    Point,
    StorageSettings,
    collection_name_problem,
    image_payload,
    point_id,
    vector_name,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_HNSW_THRESHOLD",
    "QUANTIZATIONS",
    "Catalogue",
    "Filters",
    "Hit",
    "IndexedImage",
    "ModelSpec",
    "Point",
    "StorageSettings",
    "collection_name_problem",
    "default_store_path",
    "image_payload",
    "open_store",
    "point_id",
    "vector_name",
]


def default_store_path() -> Path:
    """Embedded store location: $CATALOGUE_QDRANT_PATH, else $XDG_DATA_HOME/catalogue-indexer/qdrant."""
    return settings.get("qdrant_path")


def open_store(
    path: str | Path | None = None,
    url: str | None = None,
    api_key: str | None = None,
    *,
    create: bool = False,
    command: str | None = None,
):
    """A Qdrant server (`url`) or an embedded store (`path`, default `default_store_path()`).

    `create`: make the embedded store's folder if missing (writers do; a
    search on a mistyped path must not leave an empty store behind).
    `command` names this process in the store's lock ("indexer sync ./dam").
    Fails with StoreUnavailable, one line, when the server cannot be reached
    or another process holds the embedded store.
    """
    if path is not None and url is not None:
        raise ValueError("give a store path or a server url, not both")
    if url is not None:
        from indexer.store.server import ServerStore

        return ServerStore(url, api_key)
    from indexer.store.edge import EdgeStore

    location = Path(path).expanduser() if path is not None else default_store_path()
    return EdgeStore(location, create=create, command=command)
