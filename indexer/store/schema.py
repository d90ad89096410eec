"""The collection schema: the contract other services read (docs/schema.md).

One point per catalogue image, id derived from its path relative to the DAM
root; one named vector per encoder, cosine distance. Payload:

    product_id  keyword (indexed)   the product the image shows
    path        keyword (indexed)   image path relative to the DAM root, '/'-separated
    category    keyword (indexed)   from the manifest, when given
    meta        object              any other manifest columns
    source      keyword (indexed)   "catalogue" (a DAM image) or "store" (a confirmed store photo)
    file        {size, mtime_ns, sha256}            what sync compares
    colour      {dominant: {L, a, b}, palette: [{L, a, b, weight}], foreground}
    feedback    {id, sha256, created}               store views only: the confirmation it came from

A store view (`source: "store"`) is a store photo an associate confirmed as
the product: its query vectors and cut-out colour, a reference like the
catalogue shot. Its `path` is the photo's, relative to the feedback store
(`photos/<sha256>.<ext>`), not a DAM file; its id derives from the photo's
hash. Collections written before store views existed lack `source` on
catalogue points until their next sync: read a missing `source` as "catalogue".

The collection's record (server: collection metadata under `catalogue_indexer`;
embedded: `collection.json` beside the shard) holds the schema version, each
encoder (model id, vector name, dimension, revision), the DAM root, the
storage settings and, once fitted, the confidence calibration, so a search
never compares vectors of two different models.

Every payload key is spelled here and nowhere else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1
METADATA_KEY = "catalogue_indexer"
DEFAULT_COLLECTION = "catalogue"
#: Point ids are uuid5(POINT_NAMESPACE, relative path): the same file always lands on the same point.
POINT_NAMESPACE = uuid.UUID("6f1c2b52-7d0e-4f53-9a53-5b7c0f4e2a11")
#: Store views are uuid5(VIEW_NAMESPACE, photo sha256): one view per photo, never a DAM file's id.
VIEW_NAMESPACE = uuid.UUID("0b3e8f7a-2c61-4d1e-8a9f-3e5d7c1b9a24")

PRODUCT_ID = "product_id"
#: The longest product id, in characters: sync refuses a longer manifest id, the API takes none longer.
MAX_PRODUCT_ID = 256
PATH = "path"
CATEGORY = "category"
META = "meta"
FILE = "file"
COLOUR = "colour"
SOURCE = "source"
FEEDBACK = "feedback"
#: `source` values: a DAM image, or a store photo confirmed by staff.
CATALOGUE_SOURCE = "catalogue"
STORE_SOURCE = "store"
#: Dotted payload paths of the dominant colour, as formulas and filters name them.
DOMINANT = f"{COLOUR}.dominant"
DOMINANT_KEYS = (f"{DOMINANT}.L", f"{DOMINANT}.a", f"{DOMINANT}.b")
#: Keyword indexes: filters on these stay fast on the server and on the embedded engine.
INDEXED_FIELDS = (PRODUCT_ID, PATH, CATEGORY, SOURCE)
#: What sync compares, and what a search needs of each candidate.
SYNC_FIELDS = (PRODUCT_ID, PATH, FILE, CATEGORY, META, SOURCE)
CANDIDATE_FIELDS = (PRODUCT_ID, PATH, CATEGORY, DOMINANT, SOURCE)
#: Filters keep points whose `source` is not "store": catalogue images only (also in collections without `source`).
NOT_STORE_VIEWS = ((f"!{SOURCE}", STORE_SOURCE),)
#: Filters keeping only the store views.
STORE_VIEWS = ((SOURCE, STORE_SOURCE),)

#: Collection names become folder names of the embedded store: keep them to a safe alphabet.
COLLECTION_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_COLLECTION_NAME = 64


def point_id(relative_path: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, relative_path))


def view_point_id(photo_sha256: str) -> str:
    """The point of a store view: the same photo always lands on the same point."""
    return str(uuid.uuid5(VIEW_NAMESPACE, photo_sha256))


def shard_of(pid: str, count: int) -> int:
    """Which of `count` shards owns a point (`indexer sync --shard I/N`): stable, and the same on every worker."""
    return uuid.UUID(pid).int % count


def vector_name(model_id: str) -> str:
    """Short stable name of a model's vector: the last path component, lower-case."""
    tail = model_id.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in tail) or "image"


def collection_name_problem(name: str) -> str | None:
    """Why `name` cannot name a collection, or None when it can."""
    if not name:
        return "a collection name cannot be empty"
    if len(name) > MAX_COLLECTION_NAME:
        return f"a collection name has at most {MAX_COLLECTION_NAME} characters"
    if not set(name) <= COLLECTION_NAME_CHARS or name.strip(".") == "" or name.startswith("."):
        return "use letters, digits, '-', '_' and '.' (not first)"
    return None


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

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(data["model"], int(data["dim"]), int(data.get("revision", 1)))


QUANTIZATIONS = ("none", "int8")
DEFAULT_HNSW_THRESHOLD = 20_000


@dataclass(frozen=True)
class StorageSettings:
    """How the engine keeps the vectors: chosen when the collection is created, recorded with it.

    `quantization="int8"` keeps a 4x smaller int8 copy of every vector in RAM
    for the first pass and rescores the best ones with the originals;
    `on_disk=True` leaves the original vectors on disk (memory-mapped). Both
    matter from a few hundred thousand images on (README "Scale").
    `hnsw_threshold`: segments with fewer points are searched exactly (a scan
    of a small segment is quick); larger ones get an HNSW graph, built at the
    end of a sync.
    """

    quantization: str = "none"
    on_disk: bool = False
    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD

    def to_dict(self) -> dict:
        return {"quantization": self.quantization, "on_disk": self.on_disk, "hnsw_threshold": self.hnsw_threshold}

    @classmethod
    def from_dict(cls, data: dict | None) -> StorageSettings:
        data = data or {}
        return cls(
            str(data.get("quantization", "none")),
            bool(data.get("on_disk", False)),
            int(data.get("hnsw_threshold", DEFAULT_HNSW_THRESHOLD)),
        )


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
    source: str | None = CATALOGUE_SOURCE  # None: written before `source` existed (the next sync adds it)

    @classmethod
    def from_payload(cls, pid: str, payload: dict) -> IndexedImage:
        file = payload.get(FILE) or {}
        return cls(
            point_id=pid,
            path=payload.get(PATH, ""),
            product_id=payload.get(PRODUCT_ID, ""),
            size=int(file.get("size", -1)),
            mtime_ns=int(file.get("mtime_ns", -1)),
            sha256=file.get("sha256", ""),
            category=payload.get(CATEGORY),
            meta=payload.get(META) or {},
            source=payload.get(SOURCE),
        )


def image_payload(*, product_id: str, path: str, category: str | None, meta: dict, size: int, mtime_ns: int, sha256: str) -> dict:
    """Every payload field of a catalogue image except its colours (which only change with its pixels)."""
    return {
        PRODUCT_ID: product_id,
        PATH: path,
        CATEGORY: category,
        META: meta,
        SOURCE: CATALOGUE_SOURCE,
        FILE: {"size": size, "mtime_ns": mtime_ns, "sha256": sha256},
    }


@dataclass(frozen=True)
class Point:
    """A point to write: its id, one unit vector per encoder (by vector name), its payload."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict


@dataclass(frozen=True)
class Hit:
    """A point a query found: its id, score and the payload fields asked for."""

    id: str
    score: float
    payload: dict = field(default_factory=dict)

    @property
    def dominant_lab(self) -> np.ndarray | None:
        dominant = (self.payload.get(COLOUR) or {}).get("dominant")
        return np.array([dominant["L"], dominant["a"], dominant["b"]], dtype=np.float64) if dominant else None


#: A filter: every (payload key, value) pair must hold, and no pair whose key is written "!key".
#: Values are matched exactly.
Filters = tuple[tuple[str, str], ...]


def split_filters(filters: Filters) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(must, must_not) pairs, as both engines' filter objects take them."""
    must = [(key, value) for key, value in filters if not key.startswith("!")]
    must_not = [(key[1:], value) for key, value in filters if key.startswith("!")]
    return must, must_not
