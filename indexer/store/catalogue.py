"""A collection of catalogue images, whatever engine holds it: what sync and search ask of it.

Backends (`edge.py`, `server.py`) implement the primitive reads and writes;
the schema rules that must be the same everywhere (the record, the model
check, what an indexed image is) live here once.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

from indexer.errors import ModelMismatch
from indexer.store.schema import (
    CANDIDATE_FIELDS,
    CATEGORY,
    FEEDBACK,
    NOT_STORE_VIEWS,
    PATH,
    PRODUCT_ID,
    SCHEMA_VERSION,
    STORE_VIEWS,
    SYNC_FIELDS,
    Filters,
    Hit,
    IndexedImage,
    ModelSpec,
    Point,
    StorageSettings,
)


class Catalogue(ABC):
    """One collection: its record (schema, models, root, calibration, settings) and its points."""

    name: str
    #: One read-modify-write of a record at a time in this process (a refit beside a watch sync).
    _record_lock = threading.Lock()

    # -- primitives, one implementation per engine ---------------------------------

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def record(self) -> dict:
        """This tool's record of the collection ({} for a foreign or missing collection)."""

    @abstractmethod
    def _write_record(self, record: dict) -> None: ...

    @abstractmethod
    def _create(self, models: list[ModelSpec], settings: StorageSettings, record: dict) -> None: ...

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection and everything in it (works on a damaged embedded collection too)."""

    @abstractmethod
    def scroll(self, fields: Sequence[str], filters: Filters = (), *, batch: int = 1024) -> Iterator[tuple[str, dict]]:
        """(point id, payload fields) of every point matching `filters`."""

    @abstractmethod
    def count(self, filters: Filters = ()) -> int: ...

    @abstractmethod
    def retrieve(self, point_ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict]:
        """Payload fields of these points, by id (missing points are absent)."""

    @abstractmethod
    def facet(self, key: str, limit: int = 1000) -> dict[str, int]:
        """The values of a keyword payload field and how many points hold each, most frequent first."""

    @abstractmethod
    def upsert(self, points: Sequence[Point]) -> None: ...

    @abstractmethod
    def set_payload(self, point_ids: Sequence[str], payload: dict) -> None:
        """Set these payload fields on these points, keeping the others."""

    @abstractmethod
    def delete(self, point_ids: Sequence[str]) -> None: ...

    @abstractmethod
    def nearest(
        self, vector: np.ndarray, using: str, limit: int, filters: Filters = (), fields: Sequence[str] = CANDIDATE_FIELDS
    ) -> list[Hit]:
        """The `limit` points nearest to `vector` by cosine in vector `using`, best first."""

    @abstractmethod
    def nearest_batch(self, vectors: Sequence[np.ndarray], using: str, limit: int) -> list[list[Hit]]:
        """`nearest` for several vectors at once, without payloads."""

    @abstractmethod
    def vectors(self, point_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """Stored vectors by point id, then by vector name."""

    @abstractmethod
    def build_index(self) -> bool:
        """Build what the engine builds in the background (HNSW, quantized vectors) now, so the
        first search after a sync is fast. True if anything was built."""

    # -- the schema, the same for every engine -----------------------------------

    def models(self) -> list[ModelSpec]:
        return [ModelSpec.from_dict(m) for m in self.record().get("models", [])]

    def settings(self) -> StorageSettings:
        return StorageSettings.from_dict(self.record().get("storage"))

    def create(self, models: list[ModelSpec], *, root: str, settings: StorageSettings = StorageSettings()) -> None:
        record = {"schema": SCHEMA_VERSION, "models": [m.to_dict() for m in models], "root": root, "storage": settings.to_dict()}
        self._create(models, settings, record)

    def update_metadata(self, **fields) -> None:
        """Set fields of this tool's record (`root`, `calibration`), keeping the others."""
        with self._record_lock:
            self._write_record({**self.record(), **fields})

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

    def indexed_images(self, filters: Filters = ()) -> Iterator[IndexedImage]:
        """Every catalogue image point (store views left out) with the fields sync compares, without vectors."""
        for pid, payload in self.scroll(SYNC_FIELDS, (*filters, *NOT_STORE_VIEWS)):
            yield IndexedImage.from_payload(pid, payload)

    def store_views(self, filters: Filters = ()) -> Iterator[tuple[str, dict]]:
        """(point id, payload) of every store view: store photos staff confirmed, kept as references."""
        yield from self.scroll((PRODUCT_ID, PATH, CATEGORY, FEEDBACK), (*filters, *STORE_VIEWS))

    def has_product(self, product_id: str) -> bool:
        """Whether the product has a catalogue image (its store views do not count)."""
        return bool(self.count(((PRODUCT_ID, product_id), *NOT_STORE_VIEWS)))

    def remove_orphan_views(self) -> int:
        """Take out the store views of products that have no catalogue image left (a view must not answer a product
        that is not there); how many went. The feedback store keeps their photos: they come back with their product."""
        views: dict[str, list[str]] = {}
        for pid, payload in self.store_views():
            views.setdefault(payload.get(PRODUCT_ID, ""), []).append(pid)
        orphans = [pid for product, pids in views.items() if not self.has_product(product) for pid in pids]
        self.delete(orphans)
        return len(orphans)
