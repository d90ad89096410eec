"""Make the collection mirror a DAM folder, encoding only what changed.

Plan: compare the folder with the collection. Same size and mtime means
unchanged (no read at all); same size but another mtime is confirmed by the
content hash; anything else is re-encoded. Points of vanished files are
deleted. Metadata-only changes (manifest, id rule) rewrite payloads.

Run: deletions, payload fixes, then the images to encode stream through
worker processes (`indexer.prepare`: read, hash, decode, colours, model
inputs) into model batches and are upserted batch by batch. Point ids derive from paths and each point
is written whole, so killing a sync at any moment and running it again
converges: written points are unchanged next time, the rest is redone.
"""

from __future__ import annotations

import hashlib
import queue
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.encoders import Encoder, default_model, load_encoder, model_id_for, parse_models
from indexer.errors import BadInputError, OptionError
from indexer.images import read_file
from indexer.scan import Scan, SourceImage, display_path
from indexer.store import Catalogue, IndexedImage, Point, StorageSettings, image_payload, point_id
from indexer.store.schema import CATALOGUE_SOURCE, COLOUR, shard_of

if TYPE_CHECKING:
    from indexer.prepare import Prepared


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # kept their last good point, if they had one
    skipped: list[tuple[str, str]] = field(default_factory=list)  # left out on purpose (format, links out of the DAM)
    metadata_only: int = 0  # of `updated`: payload rewritten, image not re-encoded
    views_removed: int = 0  # store views set aside: their product left the DAM (the feedback store keeps their photos)
    views_restored: int = 0  # store views re-embedded from the feedback store (by the caller, which has the search pipeline)
    returned: list[str] = field(default_factory=list)  # products that had no catalogue image before this sync and have one now
    encoded: int = 0
    prepared_by: str | None = None  # "4 processes" or "4 threads": who read, decoded and prepared the images
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    dry_run: bool = False
    collection: str = ""
    models: list[str] = field(default_factory=list)
    shard: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "failed": [{"path": display_path(p), "error": e} for p, e in self.failed],
            "skipped": [{"path": display_path(p), "reason": r} for p, r in self.skipped],
            "metadata_only": self.metadata_only,
            "store_views_removed": self.views_removed,
            "store_views_restored": self.views_restored,
            "products_returned": len(self.returned),
            "encoded": self.encoded,
            "prepared_by": self.prepared_by,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.encoded / self.stages["encode_wall"], 2) if self.encoded else None,
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
            "dry_run": self.dry_run,
            "collection": self.collection,
            "models": self.models,
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
        }


@dataclass(frozen=True)
class DeleteLimit:
    """How much of a collection one sync may delete: a share of its images ("50%") or a count ("200").

    A folder that lost most of its files is more often a wrong mount, a half-finished copy or another
    catalogue than a brand retiring most of its products; the operator says so explicitly."""

    share: float | None = 0.5
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> DeleteLimit:
        value = str(text).strip()
        try:
            if value.endswith("%"):
                share = float(value[:-1]) / 100
                if not 0 <= share <= 1:  # also refuses NaN
                    raise ValueError
                return cls(share=share)
            count = int(value)
            if count < 0:
                raise ValueError
            return cls(share=None, count=count)
        except ValueError:
            raise OptionError(
                f"--max-delete {value[:40]!r}: expected a share of the collection from 0% to 100% (e.g. 50%), "
                "or a number of images (e.g. 200)"
            ) from None

    def allows(self, deleting: int, of: int) -> bool:
        if self.share is not None:
            return deleting <= self.share * of
        return deleting <= (self.count or 0)

    def __str__(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else str(self.count)


DEFAULT_MAX_DELETE = DeleteLimit()


@dataclass
class _Plan:
    to_encode: list[tuple[SourceImage, str | None]]  # (image, known hash: skip encoding if it still matches)
    payload_only: list[tuple[SourceImage, IndexedImage]]
    to_delete: list[IndexedImage]
    unchanged: int
    new: set[str]


def sync(
    root: Path,
    scanned: Scan,
    catalogue: Catalogue,
    *,
    model: str | None = None,
    reindex: bool = False,
    dry_run: bool = False,
    device: str = "auto",
    runtime: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    processes: bool | None = None,
    colours: int = 3,
    storage: dict | None = None,
    shard: tuple[int, int] | None = None,
    max_delete: DeleteLimit = DEFAULT_MAX_DELETE,
    progress: Callable[[int], object] | None = None,
    on_plan: Callable[[int], object] | None = None,
    on_index: Callable[[int], object] | None = None,
    encoder_loader: Callable[..., Encoder] = load_encoder,
) -> SyncReport:
    """Bring `catalogue` in line with `scanned` (the scan of `root`).

    Files the scan or the reading could not use are reported as failed and
    keep the point they had; only files gone from the folder lose theirs.

    `model` (comma-separated for several encoders) defaults to the models the
    collection already holds, or the default model for a new collection.
    `storage` holds the StorageSettings fields asked for (quantization,
    on_disk, hnsw_threshold): a new collection takes them over the defaults,
    `reindex` over the collection's own; an existing collection refuses a
    change (settings are fixed when a collection is made).
    `runtime` and `cache_dir` choose how models run (`indexer.encoders.load_encoder`).
    `workers` prepare the images (default: one per core): in processes, or threads for fewer than
    PROCESSES_FROM images; `processes` forces one or the other (`indexer.prepare`). Processes are
    spawned, so they import the calling script: a script must guard its entry point with
    `if __name__ == "__main__":`, or pass `processes=False`.
    `shard` (index, count): this worker's part of the folder only, so that `count` workers index one
    folder into one collection at once; each deletes only its own vanished points.
    Nothing is written when the folder shares no file with the collection, or when more of the
    collection would be deleted than `max_delete` allows (`OptionError`): `reindex` replaces it.
    `on_plan(total)` is called once the number of images to read is known,
    `progress(n)` as they are done, `on_index(points)` before the engine
    builds its index.
    """
    started = time.perf_counter()
    _refuse_arguments(root, scanned, shard, reindex)
    target = _target(catalogue, model, storage, reindex)
    kept = target.exists and not reindex  # the plan compares the folder with the collection's points
    scanned, indexed = _in_scope(catalogue, root, scanned, kept, shard)
    report = SyncReport(
        dry_run=dry_run,
        collection=catalogue.name,
        models=target.models,
        failed=list(scanned.failed),
        skipped=list(scanned.skipped),
        shard=shard,
    )
    plan = _plan(scanned.images, indexed, scanned.paths)
    _refuse_mass_delete(catalogue, root, plan, len(indexed), max_delete)
    if dry_run:
        _count_dry_run(plan, report)
        report.seconds = time.perf_counter() - started
        return report

    load = partial(encoder_loader, device=device, batch_size=batch_size, runtime=runtime, dtype=dtype, cache_dir=cache_dir)
    encoders = _ready_collection(catalogue, root, target, plan, reindex, load)
    _apply_deletions_and_payload_fixes(catalogue, plan, report)
    if on_plan:
        on_plan(len(plan.to_encode))
    _encode_all(plan, encoders, catalogue, report, workers=workers, processes=processes, colours=colours, progress=progress)
    _finish(catalogue, plan, report, products_before={i.product_id for i in indexed.values()} if kept else None)
    _build_index(catalogue, report, on_index)
    report.seconds = time.perf_counter() - started
    return report


def _refuse_arguments(root: Path, scanned: Scan, shard: tuple[int, int] | None, reindex: bool) -> None:
    """What no collection could make sense of: an empty folder, or a rebuild of one shard only."""
    if not scanned.images and not scanned.failed:
        raise BadInputError(f"{root}: no images found (.jpg .jpeg .png .webp); nothing was changed")
    if shard is not None and reindex:
        raise OptionError(
            "--reindex rebuilds the whole collection: run it once without --shard, then shard the syncs that follow"
        )


@dataclass(frozen=True)
class _Target:
    """What the collection is to hold after the sync: its models and storage settings."""

    exists: bool  # before the sync
    models: list[str]
    settings: StorageSettings


def _target(catalogue: Catalogue, model: str | None, storage: dict | None, reindex: bool) -> _Target:
    """The models and storage settings asked for, over those the collection records; an existing collection
    refuses another model or other settings unless it is rebuilt (`reindex`)."""
    exists = catalogue.exists()
    # A rebuild with the model named needs nothing from the old record: it may be what is broken.
    trust_record = exists and not (reindex and model)
    recorded = catalogue.models() if trust_record else []
    if model:
        wanted = parse_models(model)
    elif recorded:
        wanted = [m.model for m in recorded]  # --reindex alone rebuilds with the same model
    else:
        wanted = [model_id_for(default_model())]
    current = catalogue.settings() if trust_record else StorageSettings()
    settings = replace(current, **(storage or {}))
    if exists and not reindex:
        catalogue.check_models(wanted)
        if settings != current:
            raise OptionError(
                f"collection {catalogue.name!r} was created with {_describe(current)}; storage settings "
                f"are fixed when a collection is made: add --reindex to rebuild it with {_describe(settings)}"
            )
    return _Target(exists, wanted, settings)


def _in_scope(
    catalogue: Catalogue, root: Path, scanned: Scan, keep: bool, shard: tuple[int, int] | None
) -> tuple[Scan, dict[str, IndexedImage]]:
    """The scan and the collection's images (by path) this sync compares: none of the collection's when it is
    not kept (new, or rebuilt), and only this worker's part of both with a `shard`."""
    indexed = {image.path: image for image in catalogue.indexed_images()} if keep else {}
    if indexed:
        _refuse_another_folder(catalogue, root, indexed, scanned)
    if shard is not None:
        scanned = scanned.shard(*shard)
        indexed = {path: image for path, image in indexed.items() if shard_of(image.point_id, shard[1]) == shard[0]}
    return scanned, indexed


def _ready_collection(
    catalogue: Catalogue, root: Path, target: _Target, plan: _Plan, reindex: bool, load: Callable[[str], Encoder]
) -> list[Encoder]:
    """Load the encoders when there is something to encode or a collection to make, and make the collection
    ready for them: dropped for a rebuild, created with their specs, its recorded root this folder."""
    encoders: list[Encoder] = []
    if plan.to_encode or reindex or not target.exists:
        encoders = [load(m) for m in target.models]
        specs = [e.spec for e in encoders]
        if reindex:
            catalogue.drop()
        if catalogue.exists():
            catalogue.check_models(target.models, loaded=specs)
        else:
            catalogue.create(specs, root=str(root.resolve()), settings=target.settings)
    if catalogue.record().get("root") != str(root.resolve()):
        catalogue.update_metadata(root=str(root.resolve()))
    return encoders


def _apply_deletions_and_payload_fixes(catalogue: Catalogue, plan: _Plan, report: SyncReport) -> None:
    """The store-only part of the plan: points of vanished files go, changed metadata is rewritten in place."""
    t = time.perf_counter()
    catalogue.delete([image.point_id for image in plan.to_delete])
    for source, stored in plan.payload_only:
        catalogue.set_payload([stored.point_id], _metadata_payload(source, stored.sha256))
    report.deleted = len(plan.to_delete)
    report.metadata_only = len(plan.payload_only)
    report.unchanged = plan.unchanged
    report.stages["store_fixes"] = time.perf_counter() - t


def _finish(catalogue: Catalogue, plan: _Plan, report: SyncReport, products_before: set[str] | None) -> None:
    """Count the payload fixes as updates, set aside the store views of products that left the DAM, and name the
    products that came back (`products_before`: those the kept collection had; None for a new or rebuilt one)."""
    report.updated += report.metadata_only
    if report.deleted or report.updated or report.added:
        # Store views are not DAM files, so the plan never deletes them. A product gone from the DAM has its views set
        # aside: they leave the collection (they would answer a product that is not there) and the feedback store keeps
        # their photos, from which the caller re-embeds them when the product comes back (`returned`).
        report.views_removed = catalogue.remove_orphan_views()
    if report.added and products_before is not None:
        added = {source.product_id for source, _ in plan.to_encode if source.relative in plan.new}
        report.returned = sorted(p for p in added - products_before if p and catalogue.has_product(p))


def _build_index(catalogue: Catalogue, report: SyncReport, on_index: Callable[[int], object] | None) -> None:
    t = time.perf_counter()
    if on_index and (report.encoded or report.deleted):
        on_index(report.encoded)
    # Also when nothing changed: an index a full disk kept from being built gets built now (cheap when there is nothing to do).
    catalogue.build_index()
    report.stages["index"] = time.perf_counter() - t


def _refuse_another_folder(catalogue: Catalogue, root: Path, indexed: dict[str, IndexedImage], scanned: Scan) -> None:
    """A folder that shares no file with the collection is another catalogue, or a wrong mount, wherever it is
    (the same path can hold another catalogue tomorrow): syncing it would delete every point. Ask for --reindex
    instead of doing that silently."""
    if not (indexed.keys() & scanned.paths):
        recorded = catalogue.record().get("root") or "its DAM"
        raise OptionError(
            f"collection {catalogue.name!r} mirrors {recorded} ({len(indexed):,} images) and {root} now shares none of its "
            "files: syncing it would delete them all. Use --reindex to replace the collection with this folder, "
            "or --collection NAME to index it beside"
        )


def _refuse_mass_delete(catalogue: Catalogue, root: Path, plan: _Plan, indexed: int, limit: DeleteLimit) -> None:
    """Refuse a sync that would delete more of the collection than `limit` allows, before anything is written."""
    deleting = len(plan.to_delete)
    if deleting and not limit.allows(deleting, indexed):
        raise OptionError(
            f"{root} lacks {deleting:,} of the {indexed:,} images of collection {catalogue.name!r} "
            f"({deleting / indexed:.0%}), more than --max-delete {limit} allows: nothing was changed. If they really "
            f"left the catalogue, run again with --max-delete 100% (or --reindex)"
        )


def _describe(settings: StorageSettings) -> str:
    return f"quantization {settings.quantization}, vectors {'on disk' if settings.on_disk else 'in memory'}, HNSW from {settings.hnsw_threshold:,} points"


def _plan(sources: list[SourceImage], indexed: dict[str, IndexedImage], present: set[str]) -> _Plan:
    to_encode: list[tuple[SourceImage, str | None]] = []
    payload_only = []
    unchanged = 0
    new = set()
    for source in sources:
        stored = indexed.get(source.relative)
        if stored is None or stored.point_id != point_id(source.relative):
            to_encode.append((source, None))
            new.add(source.relative)
        elif stored.size != source.size:
            to_encode.append((source, None))
        elif stored.mtime_ns != source.mtime_ns:
            to_encode.append((source, stored.sha256))  # probably touched only: the hash decides
        elif _metadata_differs(source, stored):
            payload_only.append((source, stored))
        else:
            unchanged += 1
    to_delete = [image for path, image in indexed.items() if path not in present]
    return _Plan(to_encode, payload_only, to_delete, unchanged, new)


def _count_dry_run(plan: _Plan, report: SyncReport) -> None:
    """What a real run would do; suspected changes are confirmed by hashing, nothing is decoded."""
    for source, known in plan.to_encode:
        if known is not None:
            try:
                same = hashlib.sha256(read_file(source.path, label=source.relative)).hexdigest() == known
            except BadInputError as exc:
                report.failed.append((source.relative, exc.without(source.relative)))
                continue
            if same:
                report.unchanged += 1
                continue
        if source.relative in plan.new:
            report.added += 1
        else:
            report.updated += 1
    report.updated += len(plan.payload_only)
    report.metadata_only = len(plan.payload_only)
    report.deleted = len(plan.to_delete)
    report.unchanged += plan.unchanged


def _metadata_differs(source: SourceImage, stored: IndexedImage) -> bool:
    """Manifest fields changed, or the point predates the `source` field (given to it now, no re-encoding)."""
    return (source.product_id, source.category, source.meta, CATALOGUE_SOURCE) != (
        stored.product_id,
        stored.category,
        stored.meta,
        stored.source,
    )


def _metadata_payload(source: SourceImage, sha256: str) -> dict:
    """Every payload field except the colours, which only change with the pixels."""
    return image_payload(
        product_id=source.product_id,
        path=source.relative,
        category=source.category,
        meta=source.meta,
        size=source.size,
        mtime_ns=source.mtime_ns,
        sha256=sha256,
    )


def _encode_all(
    plan: _Plan,
    encoders: list[Encoder],
    catalogue: Catalogue,
    report: SyncReport,
    *,
    workers: int | None,
    processes: bool | None,
    colours: int,
    progress: Callable[[int], object] | None,
) -> None:
    """Stream the images to encode through the preparing workers into model batches and upserts.

    Workers (`indexer.prepare`: processes, or threads for small jobs) read, decode and prepare the
    images in order; full batches go to the model (`_ModelBatches`) while the workers prepare the next
    images. Images that need no encoding after all (their hash still matches) or that failed are settled
    as they come.
    """
    from indexer.encoders.exported import cpu_count
    from indexer.prepare import Job, Preparer, input_steps

    batches = _ModelBatches(encoders, catalogue, plan, report, progress)
    batch_size = max((e.batch_size for e in encoders), default=32)
    steps, portable = input_steps(encoders)
    processes = _prepare_in_processes(processes, portable, len(plan.to_encode))
    workers = workers or cpu_count()
    if plan.to_encode:
        report.prepared_by = f"{workers} {'processes' if processes else 'threads'}"
    batch: list[tuple[SourceImage, Prepared]] = []
    started = time.perf_counter()
    jobs = (Job(source.path, source.relative, known) for source, known in plan.to_encode)
    sources = (source for source, _ in plan.to_encode)
    with (
        Preparer(steps, colours, workers=workers, processes=processes) as preparer,
        ThreadPoolExecutor(max_workers=batches.lanes, thread_name_prefix="forward") as model,
    ):
        for source, item in zip(sources, preparer.map(jobs, window=4 * batch_size)):
            batches.add_timings(item.timings)
            if item.inputs is not None:
                batch.append((source, item))
                if len(batch) >= batch_size:
                    batches.submit(model, batch)
                    batch = []
                    batches.collect(keep=batches.lanes)
                continue
            _settle_without_encoding(catalogue, source, item, report)
            if progress:
                progress(1)
        if batch:
            batches.submit(model, batch)
        batches.collect(keep=0)
    batches.stages["encode_wall"] = time.perf_counter() - started
    report.stages.update(batches.stages)


def _prepare_in_processes(asked: bool | None, portable: bool, images: int) -> bool:
    """Worker processes for a big job (threads for a small one) unless the caller chose; never for a model whose
    preprocessing only runs beside it (a processor we cannot write down)."""
    from indexer.prepare import PROCESSES_FROM

    if asked is None:
        return portable and images >= PROCESSES_FROM
    return asked and portable


def _settle_without_encoding(catalogue: Catalogue, source: SourceImage, item: Prepared, report: SyncReport) -> None:
    """An image the workers sent back without model inputs: unchanged after all (its hash matched), or failed."""
    if item.error is not None:
        # Reported, and a point it had stays: a file unreadable this time (a glitch, a file being
        # copied, a mount going away) must not lose its last good point. The next sync tries again.
        report.failed.append((source.relative, item.error))
    else:
        catalogue.set_payload([point_id(source.relative)], _metadata_payload(source, item.sha256))
        report.unchanged += 1


class _ModelBatches:
    """Batches on their way through the encoders' lanes (`Encoder.lanes`), upserted in the order they were sent.

    On the CPU a lane is one single-threaded forward per core, each on its own batch; as many forwards run at
    once as there are lanes. `encode` sums the forwards' wall time over the lanes, `encode_cpu` their threads'
    CPU time (all of an ONNX lane's, which runs on its caller's thread).
    """

    def __init__(
        self,
        encoders: list[Encoder],
        catalogue: Catalogue,
        plan: _Plan,
        report: SyncReport,
        progress: Callable[[int], object] | None,
    ) -> None:
        self.stages = dict.fromkeys(("read", "decode", "colour", "preprocess", "encode", "encode_cpu", "upsert"), 0.0)
        self._vector_names = [e.spec.vector for e in encoders]
        self._embeds = [encoder.lanes() for encoder in encoders]
        self.lanes = min((len(lane) for lane in self._embeds), default=1)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for lane in range(self.lanes):
            self._free.put(lane)
        self._in_flight: deque = deque()  # (items, future) in order
        self._catalogue, self._plan, self._report, self._progress = catalogue, plan, report, progress

    def add_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stages[stage] += seconds

    def submit(self, model: ThreadPoolExecutor, items: list[tuple[SourceImage, Prepared]]) -> None:
        self._in_flight.append((items, model.submit(self._forward, items)))

    def collect(self, keep: int) -> None:
        """Upsert the oldest batches until at most `keep` are still in flight."""
        while len(self._in_flight) > keep:
            items, future = self._in_flight.popleft()
            self._store(items, *future.result())

    def _forward(self, items: list[tuple[SourceImage, Prepared]]) -> tuple[list[np.ndarray], float, float]:
        lane = self._free.get()  # each lane on one thread at a time
        try:
            t, cpu = time.perf_counter(), time.thread_time()
            vectors = [embed[lane]([item.inputs[i] for _, item in items]) for i, embed in enumerate(self._embeds)]
            return vectors, time.perf_counter() - t, time.thread_time() - cpu
        finally:
            self._free.put(lane)

    def _store(self, items: list[tuple[SourceImage, Prepared]], vectors: list[np.ndarray], seconds: float, cpu: float) -> None:
        t = time.perf_counter()
        self._catalogue.upsert(
            [
                Point(
                    id=point_id(source.relative),
                    vectors={name: vectors[i][row] for i, name in enumerate(self._vector_names)},
                    payload={**_metadata_payload(source, item.sha256), COLOUR: item.colour},
                )
                for row, (source, item) in enumerate(items)
            ]
        )
        self.stages["encode"] += seconds
        self.stages["encode_cpu"] += cpu
        self.stages["upsert"] += time.perf_counter() - t
        for source, _ in items:
            if source.relative in self._plan.new:
                self._report.added += 1
            else:
                self._report.updated += 1
        self._report.encoded += len(items)
        if self._progress:
            self._progress(len(items))
