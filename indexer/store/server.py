"""A Qdrant server, through qdrant-client: for several processes, several machines, and scale.

Differences from the embedded store that matter (README "Stores: embedded or
server"): the server takes concurrent clients (a sync beside a running
`search serve`), builds its indexes in the background (a sync waits for them
at its end), and keeps the collection record in Qdrant's collection metadata
(Qdrant >= 1.16) instead of a file. Which collection a name serves is a
Qdrant collection alias, switched in one `update_collection_aliases` call, so
other services querying the name follow the switch too; the collection it
replaced is kept in the new one's record (`replaced`), for the switch back.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from indexer.errors import StoreUnavailable, first_line
from indexer.store.catalogue import Catalogue
from indexer.store.schema import (
    CANDIDATE_FIELDS,
    INDEXED_FIELDS,
    METADATA_KEY,
    Filters,
    Hit,
    ModelSpec,
    Point,
    StorageSettings,
    split_filters,
)

#: Collection metadata arrived in Qdrant 1.16 (formula queries in 1.14).
MIN_SERVER_VERSION = (1, 16)
#: A sync waits this long at most for the server to finish indexing.
INDEX_WAIT_SECONDS = 600
OVERSAMPLING = 2.0
HNSW_EF = 128


def redact(url: str) -> str:
    """The URL without credentials: error messages end up in logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the given URL"
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


class ServerStore:
    """A connection to a Qdrant server, checked (reachable, key accepted, recent enough) when opened."""

    def __init__(self, url: str, api_key: str | None = None):
        from qdrant_client import QdrantClient

        self.location = redact(url)
        # The client's own version check runs in a background thread and only warns; we check below.
        # It also warns about a key over http://; the CLI says that in one line of its own.
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*insecure connection.*")
                self.client = QdrantClient(url=url, api_key=api_key, timeout=10, check_compatibility=False)
            version = self.client.info().version
            self.client.get_collections()  # `GET /` answers without a key: this call proves the key
        except Exception as exc:  # noqa: BLE001 - bad URL, connection refused, DNS, TLS, 401: all mean "not usable"
            raise StoreUnavailable(
                f"cannot reach Qdrant at {self.location}: {_redacted(exc, url)}. Is the server running "
                "(docker compose -f docker/compose.yaml up -d qdrant) and is QDRANT_API_KEY right?"
            ) from None
        if _version_tuple(version) < MIN_SERVER_VERSION:
            raise StoreUnavailable(
                f"Qdrant at {self.location} is version {version}; catalogue-indexer needs "
                f"{'.'.join(map(str, MIN_SERVER_VERSION))} or newer (collection metadata, formula queries)"
            )
        self._url = url

    def collection(self, name: str) -> ServerCatalogue:
        """The collection `name` serves: an alias's collection, resolved now (a switch later does not move it)."""
        return ServerCatalogue(self, self.resolve(name))

    # -- names: what live.py asks of a store ------------------------------------------

    def names(self) -> list[str]:
        with self.errors("listing collections"):
            return sorted(c.name for c in self.client.get_collections().collections)

    def record_of(self, name: str) -> dict:
        return ServerCatalogue(self, name).record()

    def aliases(self) -> dict[str, dict]:
        return {
            alias: {"collection": name, "previous": self.record_of(name).get("replaced")}
            for alias, name in self._alias_targets().items()
        }

    def resolve(self, name: str) -> str:
        """One call to the server: `search serve` asks every second."""
        return self._alias_targets().get(name) or name

    def _alias_targets(self) -> dict[str, str]:
        with self.errors("listing collection aliases"):
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def set_alias(self, alias: str, name: str, previous: str | None) -> None:
        """Point the alias at `name` in one call: the server applies the delete and the create together."""
        from qdrant_client import models as qm

        if alias in self.names():
            raise StoreUnavailable(
                f"{alias!r} is a collection on Qdrant at {self.location}, and Qdrant cannot give an alias the name of a "
                f"collection: point a new name at {name!r} (indexer live {name} --collection {alias}-live) and serve that "
                f"name (search serve --collection {alias}-live)"
            )
        ServerCatalogue(self, name).update_metadata(replaced=previous)
        operations = [qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=name, alias_name=alias))]
        if alias in self._alias_targets():
            operations.insert(0, qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
        with self.errors(f"pointing {alias!r} at {name!r}"):
            self.client.update_collection_aliases(change_aliases_operations=operations)

    def forget_previous(self, name: str) -> None:
        """Nothing to do: a `replaced` naming a dropped collection is refused by the switch back."""

    def drop(self, name: str) -> None:
        ServerCatalogue(self, name).drop()

    def feedback_name(self, name: str) -> str:
        return self.record_of(self.resolve(name)).get("serves") or name

    def describe(self) -> str:
        return f"Qdrant server {self.location}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """A server that fails mid-way (500, dropped connection, timeout) is one line, exit 4."""
        try:
            yield
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - qdrant-client raises many types (HTTP, gRPC, pydantic)
            raise StoreUnavailable(
                f"Qdrant at {self.location} failed while {doing}: {_redacted(exc, self._url)}; "
                "check the server (its logs, disk, memory) and run the same command again"
            ) from None


def _redacted(exc: BaseException, url: str) -> str:
    return first_line(exc).replace(url, redact(url))


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.lstrip("v").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class ServerCatalogue(Catalogue):
    def __init__(self, store: ServerStore, name: str):
        self.store = store
        self.name = name
        self._client = store.client

    def _errors(self, doing: str):
        return self.store.errors(doing)

    def exists(self) -> bool:
        with self._errors(f"looking up collection {self.name!r}"):
            return self._client.collection_exists(self.name)

    def record(self) -> dict:
        if not self.exists():
            return {}
        with self._errors(f"reading collection {self.name!r}"):
            info = self._client.get_collection(self.name)
        return dict((info.config.metadata or {}).get(METADATA_KEY) or {})

    def _write_record(self, record: dict) -> None:
        with self._errors(f"updating collection {self.name!r}"):
            self._client.update_collection(self.name, metadata={METADATA_KEY: record})

    def _create(self, models: list[ModelSpec], settings: StorageSettings, record: dict) -> None:
        from qdrant_client import models as qm

        kb = max(1, settings.hnsw_threshold * max(m.dim for m in models) * 4 // 1024)
        quantization = (
            qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True))
            if settings.quantization == "int8"
            else None
        )
        try:
            with self._errors(f"creating collection {self.name!r}"):
                self._client.create_collection(
                    self.name,
                    vectors_config={
                        m.vector: qm.VectorParams(size=m.dim, distance=qm.Distance.COSINE, on_disk=settings.on_disk)
                        for m in models
                    },
                    hnsw_config=qm.HnswConfigDiff(full_scan_threshold=kb),
                    optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=kb),
                    quantization_config=quantization,
                    metadata={METADATA_KEY: record},
                )
        except StoreUnavailable:
            if self.exists():
                return  # another worker (--shard) made it at the same moment: it makes the indexes, the caller checks the models
            raise
        with self._errors(f"creating the payload indexes of {self.name!r}"):
            for field in INDEXED_FIELDS:
                self._client.create_payload_index(
                    self.name, field, qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, on_disk=True)
                )

    def drop(self) -> None:
        with self._errors(f"deleting collection {self.name!r}"):
            if self._client.collection_exists(self.name):
                self._client.delete_collection(self.name)

    def scroll(self, fields: Sequence[str], filters: Filters = (), *, batch: int = 1024) -> Iterator[tuple[str, dict]]:
        offset = None
        while True:
            with self._errors(f"reading collection {self.name!r}"):
                points, offset = self._client.scroll(
                    self.name,
                    limit=batch,
                    offset=offset,
                    scroll_filter=_filter(filters),
                    with_payload=list(fields),
                    with_vectors=False,
                )
            for point in points:
                yield str(point.id), point.payload or {}
            if offset is None:
                return

    def count(self, filters: Filters = ()) -> int:
        if not self.exists():
            return 0
        with self._errors(f"counting collection {self.name!r}"):
            return self._client.count(self.name, count_filter=_filter(filters), exact=True).count

    def retrieve(self, point_ids, fields) -> dict[str, dict]:
        if not point_ids:
            return {}
        with self._errors(f"reading collection {self.name!r}"):
            records = self._client.retrieve(self.name, ids=list(point_ids), with_payload=list(fields), with_vectors=False)
        return {str(r.id): r.payload or {} for r in records}

    def facet(self, key, limit=1000) -> dict[str, int]:
        with self._errors(f"reading collection {self.name!r}"):
            found = self._client.facet(self.name, key=key, limit=limit, exact=True)
        return {str(hit.value): int(hit.count) for hit in found.hits}

    def nearest(self, vector, using, limit, filters=(), fields=CANDIDATE_FIELDS) -> list[Hit]:
        with self._errors(f"searching collection {self.name!r}"):
            found = self._client.query_points(
                self.name,
                query=_floats(vector),
                using=using,
                limit=limit,
                query_filter=_filter(filters),
                with_payload=list(fields),
                search_params=self._params(limit),
            ).points
        return [_hit(p) for p in found]

    def nearest_batch(self, vectors, using, limit) -> list[list[Hit]]:
        from qdrant_client import models as qm

        requests = [
            qm.QueryRequest(query=_floats(v), using=using, limit=limit, with_payload=False, params=self._params(limit))
            for v in vectors
        ]
        with self._errors(f"searching collection {self.name!r}"):
            responses = self._client.query_batch_points(self.name, requests=requests)
        return [[_hit(p) for p in r.points] for r in responses]

    def vectors(self, point_ids, names) -> dict[str, dict[str, np.ndarray]]:
        if not point_ids:
            return {}
        with self._errors(f"reading collection {self.name!r}"):
            records = self._client.retrieve(self.name, ids=list(point_ids), with_payload=False, with_vectors=list(names))
        return {str(r.id): {k: np.asarray(v, dtype=np.float32) for k, v in (r.vector or {}).items()} for r in records}

    def _params(self, limit: int):
        from qdrant_client import models as qm

        quantized = self.settings().quantization != "none"
        return qm.SearchParams(
            hnsw_ef=max(HNSW_EF, limit),
            quantization=qm.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING) if quantized else None,
        )

    def settings(self) -> StorageSettings:
        if not hasattr(self, "_settings"):
            self._settings = super().settings()
        return self._settings

    def upsert(self, points: Sequence[Point]) -> None:
        from qdrant_client import models as qm

        if not points:
            return
        structs = [
            qm.PointStruct(id=p.id, vector={k: _floats(v) for k, v in p.vectors.items()}, payload=p.payload) for p in points
        ]
        with self._errors(f"writing to collection {self.name!r}"):
            self._client.upsert(self.name, points=structs, wait=True)

    def set_payload(self, point_ids, payload) -> None:
        if point_ids:
            with self._errors(f"writing to collection {self.name!r}"):
                self._client.set_payload(self.name, payload=payload, points=list(point_ids), wait=True)

    def delete(self, point_ids) -> None:
        from qdrant_client import models as qm

        if point_ids:
            with self._errors(f"writing to collection {self.name!r}"):
                self._client.delete(self.name, points_selector=qm.PointIdsList(points=list(point_ids)), wait=True)

    def build_index(self) -> bool:
        """The server indexes in the background: wait until it reports green (or give up after a while)."""
        from qdrant_client import models as qm

        deadline = time.monotonic() + INDEX_WAIT_SECONDS
        waited = False
        while True:
            with self._errors(f"waiting for the index of {self.name!r}"):
                status = self._client.get_collection(self.name).status
            if status == qm.CollectionStatus.GREEN or time.monotonic() > deadline:
                return waited
            waited = True
            time.sleep(0.5)


def _filter(filters: Filters):
    from qdrant_client import models as qm

    if not filters:
        return None
    must, must_not = split_filters(filters)

    def conditions(pairs):
        return [qm.FieldCondition(key=key, match=qm.MatchValue(value=value)) for key, value in pairs] or None

    return qm.Filter(must=conditions(must), must_not=conditions(must_not))


def _floats(vector) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def _hit(point) -> Hit:
    return Hit(str(point.id), float(point.score), point.payload or {})
