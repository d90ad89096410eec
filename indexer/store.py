"""The Qdrant collection: how to reach it and its schema, the contract other services rely on.

One point per catalogue image (id derived from its path relative to the DAM
root), one named vector per encoder, cosine distance. Payload:

    product_id  keyword (indexed)   the product the image shows
    path        keyword (indexed)   image path relative to the DAM root, '/'-separated
    category    keyword (indexed)   from the manifest, when given
    meta        object              any other manifest columns
    file        {size, mtime_ns, sha256}            what sync compares
    colour      {dominant: {L, a, b}, palette: [{L, a, b, weight}], foreground}

The collection's metadata records the schema version, each encoder
(model id, vector name, dimension) and the DAM root, so a search never
compares vectors of two different models. See README "Collection schema".
"""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.errors import ModelMismatch, StoreUnavailable, first_line

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

SCHEMA_VERSION = 1
METADATA_KEY = "catalogue_indexer"
DEFAULT_COLLECTION = "catalogue"
#: Point ids are uuid5(POINT_NAMESPACE, relative path): the same file always lands on the same point.
POINT_NAMESPACE = uuid.UUID("6f1c2b52-7d0e-4f53-9a53-5b7c0f4e2a11")
INDEXED_FIELDS = ("product_id", "path", "category")
#: Collection metadata arrived in Qdrant 1.16 (formula queries in 1.14).
MIN_SERVER_VERSION = (1, 16)


def default_store_path() -> Path:
    """Embedded store location: $CATALOGUE_QDRANT_PATH, else $XDG_DATA_HOME/catalogue-indexer/qdrant."""
    explicit = os.environ.get("CATALOGUE_QDRANT_PATH")
    if explicit:
        return Path(explicit).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "catalogue-indexer" / "qdrant"


def point_id(relative_path: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, relative_path))


def vector_name(model_id: str) -> str:
    """Short stable name of a model's vector: the last path component, lower-case."""
    tail = model_id.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in tail) or "image"


@dataclass(frozen=True)
class ModelSpec:
    """One encoder as recorded in the collection.

    `revision` changes when this tool changes how the encoder turns pixels
    into vectors (preprocessing, pooling): vectors of two revisions do not mix.
    """

    model: str
    dim: int
    revision: int = 1

    @property
    def vector(self) -> str:
        return vector_name(self.model)

    def to_dict(self) -> dict:
        return {"model": self.model, "vector": self.vector, "dim": self.dim, "revision": self.revision}


@dataclass(frozen=True)
class IndexedImage:
    """What the collection holds for one image, as far as sync needs to know."""

    point_id: str
    path: str
    product_id: str
    size: int
    mtime_ns: int
    sha256: str
    category: str | None
    meta: dict


def open_client(path: str | Path | None = None, url: str | None = None, api_key: str | None = None) -> QdrantClient:
    """A client for a server (`url`) or an embedded store (`path`, default `default_store_path()`).

    Fails with StoreUnavailable, one line, when the server cannot be reached
    or another process holds the embedded store.
    """
    if path is not None and url is not None:
        raise ValueError("give a store path or a server url, not both")
    from qdrant_client import QdrantClient

    if url is not None:
        # The client's own version check runs in a background thread and only warns; we check below.
        try:
            client = QdrantClient(url=url, api_key=api_key, timeout=10, check_compatibility=False)
            version = client.info().version
            client.get_collections()  # `GET /` answers without a key: this call proves the key
        except Exception as exc:  # noqa: BLE001 - bad URL, connection refused, DNS, TLS, 401: all mean "not usable"
            raise StoreUnavailable(
                f"cannot reach Qdrant at {url}: {first_line(exc)}. Is the server running "
                "(docker compose -f docker/compose.yaml up -d qdrant) and is QDRANT_API_KEY right?"
            ) from None
        if _version_tuple(version) < MIN_SERVER_VERSION:
            raise StoreUnavailable(
                f"Qdrant at {url} is version {version}; catalogue-indexer needs "
                f"{'.'.join(map(str, MIN_SERVER_VERSION))} or newer (collection metadata, formula queries)"
            )
        return client
    location = Path(path) if path is not None else default_store_path()
    try:
        location.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the embedded store at {location}: {exc.strerror or exc}; "
            "choose a writable --qdrant-path (or CATALOGUE_QDRANT_PATH)"
        ) from None
    with warnings.catch_warnings():
        # Local mode warns above 20,000 points; sync reports sizes itself.
        warnings.simplefilter("ignore", UserWarning)
        # A client that finds the store locked leaves its lock-file handle to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return QdrantClient(path=str(location))
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
        gc.collect()
    raise StoreUnavailable(
        f"the embedded store {location} is in use by another process (a running sync or search?); "
        "wait for it to finish, or run a Qdrant server and use --qdrant-url for concurrent access"
    )


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.lstrip("v").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class Catalogue:
    """The catalogue collection: schema checks, reads and writes sync and search need."""

    def __init__(self, client: QdrantClient, name: str = DEFAULT_COLLECTION):
        self.client = client
        self.name = name

    # -- schema ---------------------------------------------------------------

    def exists(self) -> bool:
        return self.client.collection_exists(self.name)

    def metadata(self) -> dict:
        """This tool's record in the collection metadata ({} for a foreign or missing collection)."""
        if not self.exists():
            return {}
        info = self.client.get_collection(self.name)
        return dict((info.config.metadata or {}).get(METADATA_KEY) or {})

    def models(self) -> list[ModelSpec]:
        return [ModelSpec(m["model"], int(m["dim"]), int(m.get("revision", 1))) for m in self.metadata().get("models", [])]

    def create(self, models: list[ModelSpec], *, root: str) -> None:
        from qdrant_client import models as qm

        record = {"schema": SCHEMA_VERSION, "models": [m.to_dict() for m in models], "root": root}
        self.client.create_collection(
            self.name,
            vectors_config={m.vector: qm.VectorParams(size=m.dim, distance=qm.Distance.COSINE) for m in models},
            metadata={METADATA_KEY: record},
        )
        with warnings.catch_warnings():
            # Embedded mode filters by brute force and says indexes do nothing there; a server uses them.
            warnings.simplefilter("ignore", UserWarning)
            for field in INDEXED_FIELDS:
                self.client.create_payload_index(self.name, field, qm.PayloadSchemaType.KEYWORD)

    def update_metadata(self, **fields) -> None:
        """Set fields of this tool's metadata record (`root`, `calibration`), keeping the others."""
        self.client.update_collection(self.name, metadata={METADATA_KEY: {**self.metadata(), **fields}})

    def drop(self) -> None:
        if self.exists():
            self.client.delete_collection(self.name)

    def check_models(self, wanted: list[str], loaded: list[ModelSpec] | None = None) -> None:
        """Refuse to mix models: an existing collection only takes vectors of the models it records.

        `wanted` model ids can be checked before loading anything; `loaded`
        encoders' dimensions and revisions once they are loaded.
        """
        recorded = self.models()
        if not recorded:
            raise ModelMismatch(
                f"collection {self.name!r} was not created by catalogue-indexer; "
                "choose another --collection, or --reindex to re-create it"
            )
        have = ", ".join(f"{m.model} ({m.dim}-d)" for m in recorded)
        use = ",".join(m.model for m in recorded)
        if [m.model for m in recorded] != wanted:
            raise ModelMismatch(
                f"collection {self.name!r} holds vectors of {have}, not of {', '.join(wanted)}; "
                f"use --model {use}, or --reindex to rebuild it with the new model"
            )
        if loaded is not None and [(m.dim, m.revision) for m in recorded] != [(m.dim, m.revision) for m in loaded]:
            raise ModelMismatch(
                f"collection {self.name!r} was built by another version of {use} "
                f"({[(m.dim, m.revision) for m in recorded]} vs {[(m.dim, m.revision) for m in loaded]} as (dim, revision)); "
                "run indexer sync with --reindex to rebuild it"
            )

    # -- reading ----------------------------------------------------------------

    def indexed_images(self) -> Iterator[IndexedImage]:
        """Every image point with the fields sync compares, without vectors."""
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.name,
                limit=1024,
                offset=offset,
                with_payload=["product_id", "path", "file", "category", "meta"],
                with_vectors=False,
            )
            for point in points:
                payload = point.payload or {}
                file = payload.get("file") or {}
                yield IndexedImage(
                    point_id=str(point.id),
                    path=payload.get("path", ""),
                    product_id=payload.get("product_id", ""),
                    size=int(file.get("size", -1)),
                    mtime_ns=int(file.get("mtime_ns", -1)),
                    sha256=file.get("sha256", ""),
                    category=payload.get("category"),
                    meta=payload.get("meta") or {},
                )
            if offset is None:
                return

    def count(self) -> int:
        return self.client.count(self.name, exact=True).count if self.exists() else 0

    # -- writing ----------------------------------------------------------------

    def upsert(self, points: list) -> None:
        if points:
            self.client.upsert(self.name, points=points, wait=True)

    def set_payload(self, point_id: str, payload: dict) -> None:
        self.client.set_payload(self.name, payload=payload, points=[point_id], wait=True)

    def delete(self, point_ids: list[str]) -> None:
        from qdrant_client import models as qm

        if point_ids:
            self.client.delete(self.name, points_selector=qm.PointIdsList(points=point_ids), wait=True)
