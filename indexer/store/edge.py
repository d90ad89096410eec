"""The embedded store: Qdrant Edge, Qdrant's engine inside this process (the default).

Layout of a store folder:

    locks/NAME.lock                  who holds each collection (see lock.py)
    live.json                        which collection each name serves (see live.py), written atomically
    collections/NAME/shard/          one Edge shard per collection: WAL, segments, HNSW
    collections/NAME/collection.json this tool's record of the collection
    collections/NAME/index.pending   writes not indexed yet (the next sync builds the index)

Edge has the server's query language (prefetch, formulas, filters, payload
indexes, quantization) but no collections and no collection metadata: a
collection is a shard folder, and its record is a JSON file beside it,
written atomically. One process at a time in each collection: Edge locks
each shard's write-ahead log, and `CollectionLock` says who holds it; other
processes may use the store's other collections meanwhile.

Engine failures (disk full, read-only mount, damaged files) become one-line
`StoreUnavailable` errors naming the store and what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from indexer import settings
from indexer.errors import BadInputError, StoreUnavailable, first_line
from indexer.store.catalogue import Catalogue
from indexer.store.lock import CollectionLock
from indexer.store.schema import (
    CANDIDATE_FIELDS,
    INDEXED_FIELDS,
    Filters,
    Hit,
    ModelSpec,
    Point,
    StorageSettings,
    split_filters,
)

COLLECTIONS = "collections"
SHARD = "shard"
RECORD = "collection.json"
#: Which collection each name serves: {name: {"collection": ..., "previous": ..., "since": ...}}.
LIVE = "live.json"
#: Present while writes have not been indexed yet: the next sync builds the index even if nothing changed.
PENDING = "index.pending"
#: HNSW parameters: Qdrant's defaults (their recall on points shaped like ours: `benchmarks/store_scale.py`).
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
#: Search breadth of HNSW queries: at least this, and at least the number of results asked for.
HNSW_EF = 128
#: int8 first pass, then the best `OVERSAMPLING` x limit rescored with the original vectors.
OVERSAMPLING = 2.0
#: What a write takes on disk compared with its raw size: the log, the segment, the payload index.
WRITE_AMPLIFICATION = 4


class EdgeStore:
    """An embedded store folder; each collection it opens is locked for this process until `close()` or `release()`."""

    def __init__(self, root: Path, *, create: bool, command: str | None = None):
        self.root = root
        if not root.is_dir():
            if not create:
                raise BadInputError(
                    f"no embedded store at {root}; index a catalogue into it first: indexer sync DAM_FOLDER --qdrant-path {root}"
                )
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the embedded store at {root}: {exc.strerror or exc}; "
                    "choose a writable --qdrant-path (or CATALOGUE_QDRANT_PATH)"
                ) from None
        self._command = command
        self._locks: dict[str, CollectionLock] = {}
        self._shards: dict[str, object] = {}
        self._guard = threading.RLock()

    def collection(self, name: str) -> EdgeCatalogue:
        """The collection `name` serves (live.json), locked for this process."""
        from indexer.store.legacy import refuse_legacy

        physical = self.resolve(name)
        self._hold(physical)
        catalogue = EdgeCatalogue(self, physical)
        if not catalogue.exists():
            refuse_legacy(self.root, physical)
        return catalogue

    def _hold(self, name: str) -> None:
        with self._guard:
            if name not in self._locks:
                self._locks[name] = CollectionLock(self.root, name, self._command)

    def _let_go(self, name: str) -> None:
        with self._guard:
            lock = self._locks.pop(name, None)
        if lock is not None:
            lock.release()

    # -- names: what live.py asks of a store ------------------------------------------

    def names(self) -> list[str]:
        """The collections in this store (their records), by name."""
        folder = self.root / COLLECTIONS
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / RECORD).is_file())

    def record_of(self, name: str) -> dict:
        """A collection's record, read without opening (or locking) it."""
        try:
            record = json.loads((self.folder(name) / RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def aliases(self) -> dict[str, dict]:
        """live.json: for each name, the collection it serves and the one it served before."""
        try:
            found = json.loads((self.root / LIVE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(
                f"{self.root / LIVE} is unreadable ({first_line(exc)}); say which collection is live again: indexer live NAME"
            ) from None
        return found if isinstance(found, dict) else {}

    def resolve(self, name: str) -> str:
        """The collection `name` serves: the one live.json names, else the collection called `name`."""
        return (self.aliases().get(name) or {}).get("collection") or name

    def set_alias(self, alias: str, name: str, previous: str | None) -> None:
        """Make `name` the collection `alias` serves, in one atomic replace of live.json."""
        aliases = self.aliases()
        aliases[alias] = {"collection": name, "previous": previous, "since": time.time()}
        self._write_aliases(aliases)

    def forget_previous(self, name: str) -> None:
        """A dropped collection is nobody's way back any more."""
        aliases = self.aliases()
        if any(entry.get("previous") == name for entry in aliases.values()):
            self._write_aliases(
                {a: {**e, "previous": None if e.get("previous") == name else e.get("previous")} for a, e in aliases.items()}
            )

    def _write_aliases(self, aliases: dict) -> None:
        path = self.root / LIVE
        partial = path.with_name(f".{LIVE}.{os.getpid()}.partial")
        try:
            partial.write_text(json.dumps(aliases, indent=1))
            with open(partial, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, path)  # a reader (search serve) sees the old record or the new one, never half
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise StoreUnavailable(_explain(self.root, "writing which collection is live", str(exc))) from None

    def drop(self, name: str) -> None:
        """Delete a collection (locked first: refused while another process uses it)."""
        self._hold(name)
        self.forget(name)
        self._let_go(name)

    def feedback_name(self, name: str) -> str:
        """The name a collection's feedback is kept under: the live name it was built to serve, else its own."""
        return self.record_of(self.resolve(name)).get("serves") or name

    def describe(self) -> str:
        return f"embedded store {self.root}"

    def close(self) -> None:
        with self._guard:
            shards, self._shards = self._shards, {}
        try:
            for name, shard in shards.items():
                with self.errors(f"closing collection {name!r}"):
                    shard.close()
        finally:
            for name in list(self._locks):
                self._let_go(name)

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shards ---------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        return self.root / COLLECTIONS / name

    def shard(self, name: str):
        """The collection's open shard, loaded (and locked) on first use."""
        with self._guard:
            shard = self._shards.get(name)
            if shard is None:
                import qdrant_edge as qe

                self._hold(name)
                # A damaged file can make the engine panic; its report goes to our one line, not the terminal.
                with self.errors(f"opening collection {name!r}"), _engine_stderr_captured():
                    shard = qe.EdgeShard.load(str(self.folder(name) / SHARD))
                self._shards[name] = shard
            return shard

    def create_shard(self, name: str, config) -> object:
        import qdrant_edge as qe

        path = self.folder(name) / SHARD
        with self._guard:
            self._hold(name)
            if path.exists():  # left by a create that died before its record was written
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.errors(f"creating collection {name!r}"):
                shard = qe.EdgeShard.create(str(path), config)
            self._shards[name] = shard
            return shard

    def release(self, name: str) -> None:
        """Close a collection's shard and let go of its lock (both are taken again on next use)."""
        with self._guard:
            shard = self._shards.pop(name, None)
        try:
            if shard is not None:
                with self.errors(f"closing collection {name!r}"):
                    shard.close()
        finally:
            self._let_go(name)

    def forget(self, name: str) -> None:
        """Close and delete a collection's files (its lock is kept: a re-index creates it again); its shard need
        not be loadable."""
        with self._guard:
            shard = self._shards.pop(name, None)
        if shard is not None:
            with contextlib.suppress(Exception):
                shard.close()
        shutil.rmtree(self.folder(name), ignore_errors=True)

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Engine exceptions as one line that says what failed and what to do."""
        try:
            yield
        except (StoreUnavailable, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - Edge raises Exception, and PanicException (a BaseException) on damaged files
            raise StoreUnavailable(_explain(self.root, doing, first_line(exc))) from None

    def ensure_space(self, needed: int, doing: str) -> None:
        """Refuse a write that could fill the disk: the engine maps its files into memory, and a
        write into a full disk through a mapping kills the process (SIGBUS) instead of failing."""
        free = shutil.disk_usage(self.root).free
        if free < needed + disk_reserve():
            raise StoreUnavailable(
                f"the embedded store {self.root} is nearly out of disk space ({free / 2**20:.0f} MB free, {doing} needs "
                f"about {(needed + disk_reserve()) / 2**20:.0f} MB with the {disk_reserve() / 2**20:.0f} MB safety margin): "
                "free some space and run the same command again; what was written before is kept"
            )

    def usage(self, name: str) -> int:
        """Bytes the collection's files really take on disk (its write-ahead log is sparse)."""
        total = 0
        for folder, _dirs, files in os.walk(self.folder(name)):
            for file in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(folder, file)).st_blocks * 512
        return total


def disk_reserve() -> int:
    """Free bytes kept untouched on the store's disk, room for the engine's log to grow ($CATALOGUE_DISK_RESERVE_MB)."""
    return settings.get("disk_reserve_mb") * 2**20


@contextlib.contextmanager
def _engine_stderr_captured() -> Iterator[None]:
    """Keep what the engine writes to the process's stderr (a panic report) off the terminal."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _explain(root: Path, doing: str, message: str) -> str:
    lowered = message.lower()
    if "no space left" in lowered or "os error 28" in lowered:
        return (
            f"the embedded store {root} is out of disk space ({doing}): free some space and run the same "
            "command again; what was written before is kept"
        )
    if "read-only file system" in lowered or "os error 30" in lowered:
        return (
            f"the embedded store {root} is on a read-only file system, and the embedded engine writes to its "
            f"files even to search; mount it writable, copy it somewhere writable (cp -r {root} /tmp/store), "
            "or serve the collection from a Qdrant server (--qdrant-url)"
        )
    if "wouldblock" in lowered or "would block" in lowered:
        return (
            f"the embedded store {root} is in use by another process; wait for it to finish, "
            "or run a Qdrant server (--qdrant-url) for several processes at once"
        )
    return (
        f"the embedded store {root} failed while {doing}: {message}. If its files are damaged, rebuild the "
        'collection: indexer sync DAM_FOLDER --reindex (README "Store faults")'
    )


class EdgeCatalogue(Catalogue):
    def __init__(self, store: EdgeStore, name: str):
        self.store = store
        self.name = name
        self._record: dict | None = None  # this process holds the store: nobody else changes the record
        self._pending = False

    @property
    def _shard(self):
        return self.store.shard(self.name)

    def _errors(self, doing: str):
        return self.store.errors(doing)

    # -- record -----------------------------------------------------------------------

    @property
    def _record_path(self) -> Path:
        return self.store.folder(self.name) / RECORD

    def exists(self) -> bool:
        return self._record_path.is_file() and (self.store.folder(self.name) / SHARD).is_dir()

    def record(self) -> dict:
        if self._record is None:
            self._record = self._read_record()
        return dict(self._record)

    def _read_record(self) -> dict:
        try:
            record = json.loads(self._record_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(
                f"the record of collection {self.name!r} in {self.store.root} is unreadable ({first_line(exc)}); "
                "rebuild it: indexer sync DAM_FOLDER --reindex --model MODEL"
            ) from None
        return record if isinstance(record, dict) else {}

    def _write_record(self, record: dict) -> None:
        path = self._record_path
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_text(json.dumps(record, indent=1))
            with open(partial, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, path)  # a reader sees the old record or the new one, never half of one
            self._record = dict(record)
        except OSError as exc:
            raise StoreUnavailable(_explain(self.store.root, f"writing the record of {self.name!r}", str(exc))) from None

    def _create(self, models: list[ModelSpec], settings: StorageSettings, record: dict) -> None:
        import qdrant_edge as qe

        self.store.ensure_space(0, "creating a collection")
        shard = self.store.create_shard(self.name, _config(models, settings))
        with self._errors(f"creating collection {self.name!r}"):
            for field in INDEXED_FIELDS:
                # Memory-mapped: a store of a million paths opens in a fraction of a second, not rebuilt maps.
                shard.update(qe.UpdateOperation.create_field_index(field, qe.KeywordIndexParams(on_disk=True)))
            shard.flush()
        self._write_record(record)  # last: a collection without its record does not exist

    def drop(self) -> None:
        self.store.forget(self.name)
        self._record = None

    # -- reads -----------------------------------------------------------------------

    def scroll(self, fields: Sequence[str], filters: Filters = (), *, batch: int = 1024) -> Iterator[tuple[str, dict]]:
        import qdrant_edge as qe

        offset = None
        while True:
            with self._errors(f"reading collection {self.name!r}"):
                records, offset = self._shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=batch, filter=_filter(filters), with_payload=list(fields), with_vector=False
                    )
                )
            for record in records:
                yield str(record.id), record.payload or {}
            if offset is None:
                return

    def count(self, filters: Filters = ()) -> int:
        import qdrant_edge as qe

        if not self.exists():
            return 0
        with self._errors(f"counting collection {self.name!r}"):
            return int(self._shard.count(qe.CountRequest(exact=True, filter=_filter(filters))))

    def retrieve(self, point_ids, fields) -> dict[str, dict]:
        if not point_ids:
            return {}
        with self._errors(f"reading collection {self.name!r}"):
            records = self._shard.retrieve(list(point_ids), with_payload=list(fields), with_vector=False)
        return {str(r.id): r.payload or {} for r in records}

    def facet(self, key, limit=1000) -> dict[str, int]:
        import qdrant_edge as qe

        with self._errors(f"reading collection {self.name!r}"):
            found = self._shard.facet(qe.FacetRequest(key=key, limit=limit, exact=True))
        return {str(hit.value): int(hit.count) for hit in found.hits}

    def nearest(self, vector, using, limit, filters=(), fields=CANDIDATE_FIELDS) -> list[Hit]:
        import qdrant_edge as qe

        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(_floats(vector), using=using),
            filter=_filter(filters),
            with_payload=list(fields),
            params=self._params(limit),
        )
        with self._errors(f"searching collection {self.name!r}"):
            return [_hit(p) for p in self._shard.query(request)]

    def nearest_batch(self, vectors, using, limit) -> list[list[Hit]]:
        import qdrant_edge as qe

        requests = [
            qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(_floats(v), using=using), with_payload=False, params=self._params(limit)
            )
            for v in vectors
        ]
        with self._errors(f"searching collection {self.name!r}"):
            return [[_hit(p) for p in found] for found in self._shard.query_batch(qe.QueryBatchRequest(requests))]

    def vectors(self, point_ids, names) -> dict[str, dict[str, np.ndarray]]:
        if not point_ids:
            return {}
        with self._errors(f"reading collection {self.name!r}"):
            records = self._shard.retrieve(list(point_ids), with_payload=False, with_vector=list(names))
        return {str(r.id): {k: np.asarray(v, dtype=np.float32) for k, v in (r.vector or {}).items()} for r in records}

    def _params(self, limit: int):
        import qdrant_edge as qe

        quantized = self.settings().quantization != "none"
        return qe.SearchParams(
            hnsw_ef=max(HNSW_EF, limit),
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING) if quantized else None,
        )

    # -- writes ------------------------------------------------------------------------

    def _wrote(self) -> None:
        if not self._pending:
            (self.store.folder(self.name) / PENDING).touch()
            self._pending = True

    def upsert(self, points: Sequence[Point]) -> None:
        import qdrant_edge as qe

        if not points:
            return
        raw = sum(4 * sum(len(v) for v in p.vectors.values()) + len(json.dumps(p.payload)) for p in points)
        self.store.ensure_space(WRITE_AMPLIFICATION * raw, f"writing {len(points)} points")
        operation = qe.UpdateOperation.upsert_points(
            [qe.Point(id=p.id, vector={k: _floats(v) for k, v in p.vectors.items()}, payload=p.payload) for p in points]
        )
        self._wrote()
        with self._errors(f"writing to collection {self.name!r}"):
            self._shard.update(operation)

    def set_payload(self, point_ids, payload) -> None:
        import qdrant_edge as qe

        if point_ids:
            self.store.ensure_space(WRITE_AMPLIFICATION * len(point_ids) * len(json.dumps(payload)), "updating payloads")
            self._wrote()
            with self._errors(f"writing to collection {self.name!r}"):
                self._shard.update(qe.UpdateOperation.set_payload(list(point_ids), payload))

    def delete(self, point_ids) -> None:
        import qdrant_edge as qe

        if point_ids:
            self.store.ensure_space(64 * len(point_ids), "deleting points")
            self._wrote()
            with self._errors(f"writing to collection {self.name!r}"):
                self._shard.update(qe.UpdateOperation.delete_points(list(point_ids)))

    def build_index(self) -> bool:
        pending = self.store.folder(self.name) / PENDING
        if not pending.exists():
            return False
        # The optimizer writes new segments beside the old ones before it drops them.
        self.store.ensure_space(self.store.usage(self.name), "building the index")
        with self._errors(f"building the index of collection {self.name!r}"):
            built = bool(self._shard.optimize())
            self._shard.flush()
        pending.unlink()
        self._pending = False
        return built


def _config(models: list[ModelSpec], settings: StorageSettings):
    import qdrant_edge as qe

    # Qdrant counts its thresholds in KB of vectors per segment; ours is in points.
    kb = max(1, settings.hnsw_threshold * max(m.dim for m in models) * 4 // 1024)
    quantization = (
        qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        if settings.quantization == "int8"
        else None
    )
    return qe.EdgeConfig(
        vectors={
            m.vector: qe.EdgeVectorParams(size=m.dim, distance=qe.Distance.Cosine, on_disk=settings.on_disk) for m in models
        },
        hnsw_config=qe.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=kb),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=kb),
    )


def _filter(filters: Filters):
    import qdrant_edge as qe

    if not filters:
        return None
    must, must_not = split_filters(filters)

    def conditions(pairs):
        return [qe.FieldCondition(key=key, match=qe.MatchValue(value)) for key, value in pairs] or None

    return qe.Filter(must=conditions(must), must_not=conditions(must_not))


def _floats(vector) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def _hit(point) -> Hit:
    return Hit(str(point.id), float(point.score), point.payload or {})
