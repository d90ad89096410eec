"""The long-running search service: models and store loaded once, shared by every request.

`Service` is what the HTTP app calls; it knows nothing of HTTP. It loads in
the background (the server answers /healthz at once and /readyz once the
models are loaded and warmed up), admits at most `workers + queue` searches
at a time (the rest are refused at once, so an overload never takes the
server down), and optionally keeps the collection in sync with a DAM folder
(`watch`) using the same incremental sync as `indexer sync` and the models
already in memory.

Stopping never leaves a client or a thread waiting without an end: searches
still queued are answered `ShuttingDown` at once, running ones get a grace to
finish and are answered `ShuttingDown` after it, forwards waiting for a
micro-batch are failed, a watch sync stops at its next batch, and the store
is closed only once every thread is out of it (or left to the operating
system if one is still stuck after `STOP_WAIT`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from pathlib import Path

from indexer.errors import CatalogueError
from indexer.scan import display_path
from indexer.store.schema import (
    CATALOGUE_SOURCE,
    CATEGORY,
    COLOUR,
    FEEDBACK,
    META,
    NOT_STORE_VIEWS,
    PATH,
    PRODUCT_ID,
    SOURCE,
    STORE_SOURCE,
    STORE_VIEWS,
)
from search.options import SearchOptions
from search.serve.config import ServeConfig
from search.serve.metrics import Metrics

log = logging.getLogger("catalogue.serve")
#: How long closing waits for threads still at work (a model forward, a watch sync's batch) after every
#: client was answered; then the process ends without them.
STOP_WAIT = 5.0


class Busy(Exception):
    """More searches are running and waiting than the service admits."""


class NotReady(Exception):
    """The models or the store are still loading (or failed to)."""


class ShuttingDown(Exception):
    """The server is stopping: this work was refused, or abandoned before it finished."""


class Service:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.searcher = None
        self.store = None
        self.failure: CatalogueError | None = None
        self.ready = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="search")
        self._admitted = threading.BoundedSemaphore(config.workers + config.queue)
        self._text_encoder = None
        self._text_lock = threading.Lock()
        self._products: int | None = None
        self._stop = threading.Event()  # set once: the server is stopping
        self._answers: dict[Future, bool] = {}  # unanswered work -> may be abandoned (not a write)
        self._working = 0  # pool threads inside a piece of work
        self._changed = threading.Condition()  # guards both; notified when either shrinks
        self._loader: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._follower: threading.Thread | None = None  # follows `indexer live` (live.py)
        self.refitter = None  # refits the confidence on the store's answers (search/refit.py), once loaded
        self.stragglers = False  # threads still at work when closing gave up waiting for them
        self.watch_state: dict = {}
        self._failing: dict[str, tuple] = {}  # files failing under --watch, as last logged
        self.started = time.time()
        self.metrics = Metrics(
            admitted=config.workers + config.queue, in_flight=lambda: (self._working, len(self._answers) - self._working)
        )

    # -- life cycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Open the store, load and warm the models; then serve. Failures are kept in `failure`."""
        self._loader = threading.current_thread()  # a stop waits for it before closing the store
        try:
            self._load()
        except ShuttingDown:
            return  # stopped while indexing a new store: the next start goes on
        except CatalogueError as exc:
            self.failure = exc  # `run` reports it in one line and exits with its code
            return
        except Exception as exc:  # a bug: logged in full, reported in one line
            log.exception("loading failed")
            self.failure = CatalogueError(f"internal error while loading ({type(exc).__name__}); the log above has the details")
            return
        if self._stop.is_set():
            return  # stopped while loading: nothing to announce or serve
        if self.config.url and not self.config.qdrant_url:
            from search.serve import handoff

            roots = {CATALOGUE_SOURCE: self.searcher.root, STORE_SOURCE: self.searcher.views_root}
            handoff.announce(self.store.root, self.config.url, self.config.tls_cert, roots)
        self.ready.set()
        log.info("ready: collection %r in the %s, %d images", self.config.collection, self.store.describe(), self.searcher.images)
        threading.Thread(target=self._count_products, name="count-products", daemon=True).start()
        self.refitter.nudge()  # answers collected before this start may be due a fit
        if self.config.watch is not None and not self._stop.is_set():
            self._watcher = threading.Thread(target=self._watch, name="watch", daemon=True)
            self._watcher.start()
        from search.serve.live import follow

        self._follower = threading.Thread(target=follow, args=(self,), name="follow-live", daemon=True)
        self._follower.start()

    def _load(self) -> None:
        from indexer.store import open_store

        config = self.config
        self.store = open_store(
            path=None if config.qdrant_url else config.qdrant_path,
            url=config.qdrant_url,
            api_key=config.qdrant_api_key,
            command="search serve",
            create=config.watch is not None,
        )
        catalogue = self.store.collection(config.collection)
        if config.watch is not None and not catalogue.exists():
            self._sync(catalogue)  # a new store: index the folder before serving it
        self.searcher, self.views = self.pipeline(catalogue, config.model)
        from search.refit import Refitter

        self.refitter = Refitter(
            self.searcher,
            self.views.log,
            min_answers=config.refit_after,
            every=config.refit_every,
            quiet=config.refit_quiet,
            stop=self._stop,
        )

    def pipeline(self, catalogue, model: str | None):
        """(searcher, store views) over `catalogue`, its models loaded (their forwards batched) and warmed up."""
        from indexer.encoders import load_encoder
        from search.query import Searcher
        from search.serve.batching import BatchingEncoder
        from search.views import StoreViews

        config = self.config

        loading = time.perf_counter()

        def batching_loader(model: str, **options):
            encoder = load_encoder(model, threads=config.model_threads, **options)
            return BatchingEncoder(
                encoder, max_batch=config.max_batch, max_wait=config.batch_wait, observe=self.metrics.batch.observe
            )

        searcher = Searcher(
            catalogue,
            model=model,
            localiser=config.locate,
            detector_options=config.detector_options,
            encoder_loader=batching_loader,
            **config.model_loading,
        )
        self._warm_up(searcher)
        self.metrics.model_load.set(time.perf_counter() - loading)
        return searcher, StoreViews(catalogue, searcher=searcher)

    def adopt(self, searcher, views) -> list[Future]:
        """Answer from another collection (`indexer live` switched it): one reference swap; the searches
        admitted before it (returned) finish on the old one."""
        with self._text_lock, self._changed:
            self.searcher, self.views, self._text_encoder = searcher, views, None
            if self.refitter is not None:  # the refit follows: it fits the collection that answers
                self.refitter.searcher, self.refitter.log = searcher, views.log
            return list(self._answers)

    def _warm_up(self, searcher) -> None:
        """One search of a photo-like JPEG (texture, a product, decoded from bytes like an upload), so the
        first-call costs of the decoder, GrabCut and the models are paid before /readyz says ready."""
        import io

        import numpy as np
        from PIL import Image, ImageDraw

        rng = np.random.default_rng(0)
        picture = Image.fromarray(rng.integers(60, 200, (640, 480, 3), dtype=np.uint8))
        ImageDraw.Draw(picture).ellipse((120, 180, 360, 460), fill=(150, 40, 30))
        photo = io.BytesIO()
        picture.save(photo, "JPEG", quality=85)
        searcher.search_bytes_or_path(photo.getvalue(), SearchOptions(), query="warm-up")

    def stop(self, grace: float) -> None:
        """Take no more work: what waits in the queue is answered ShuttingDown now, what runs gets `grace`
        seconds to finish, then is answered ShuttingDown too (writes excepted: they may still complete)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)  # queued jobs: cancelled, their answers refused
        threading.Thread(target=self._abandon_after, args=(grace,), name="stop", daemon=True).start()

    def close(self) -> None:
        """Stop (no grace left), wait at most STOP_WAIT for the threads still at work, close the store."""
        self.stop(0)
        self._abandon()
        if not self._wait_idle(STOP_WAIT):
            self.stragglers = True
            log.warning("stopping: work still running after %gs (a model forward or a watch sync); not waiting for it", STOP_WAIT)
        if self.store is not None:
            if not self.config.qdrant_url:
                from search.serve import handoff

                handoff.withdraw(self.store.root)
            if not self.stragglers:  # else a thread may still be inside it: the OS releases its lock at exit
                self.store.close()

    def _abandon_after(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        with self._changed:
            while any(self._answers.values()) and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
        self._abandon()

    def _abandon(self) -> None:
        """Answer what still runs ShuttingDown, and fail the forwards waiting for a micro-batch."""
        with self._changed:
            abandoned = [answer for answer, abandonable in self._answers.items() if abandonable]
        for answer in abandoned:
            _settle(answer, exception=ShuttingDown())
        if self.searcher is not None:
            for encoder in self.searcher.encoders:
                encoder.close()

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._working and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            idle = not self._working
        for thread in (self._loader, self._watcher, self._follower, self.refitter and self.refitter.thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                idle = idle and not thread.is_alive()
        return idle

    def _halt_if_stopping(self, _done: int = 0) -> None:
        """A sync's progress callback: a stop ends it between batches (what it wrote stays; the next sync goes on)."""
        if self._stop.is_set():
            raise ShuttingDown()

    # -- searches ----------------------------------------------------------------------------

    def submit(self, work, *args) -> Future:
        """Run `work(*args)` in the worker pool; its answer comes in the future. Busy at once when the pool
        and its queue are full, ShuttingDown once the server is stopping."""
        if self._stop.is_set():
            raise ShuttingDown()
        if not self.ready.is_set():
            raise NotReady(str(self.failure) if self.failure else "loading the models and the store")
        if not self._admitted.acquire(blocking=False):
            raise Busy()
        answer: Future = Future()
        with self._changed:
            self._answers[answer] = work not in (self.record_feedback, self.remove_feedback)
        answer.add_done_callback(self._answered)
        try:
            job = self._pool.submit(self._run, answer, work, *args)
        except RuntimeError:  # the pool shut down since the check above
            _settle(answer, exception=ShuttingDown())
        else:
            job.add_done_callback(lambda job: job.cancelled() and _settle(answer, exception=ShuttingDown()))
        return answer

    def _run(self, answer: Future, work, *args) -> None:
        if answer.done():
            return  # answered already (the server is stopping)
        with self._changed:
            self._working += 1
        try:
            _settle(answer, result=work(*args))
        except BaseException as exc:  # noqa: BLE001 - the request's handler turns it into its answer
            _settle(answer, exception=exc)
        finally:
            with self._changed:
                self._working -= 1
                self._changed.notify_all()

    def _answered(self, answer: Future) -> None:
        with self._changed:
            self._answers.pop(answer, None)
            self._changed.notify_all()
        self._admitted.release()

    def search_upload(self, data: bytes, name: str, options: SearchOptions, locate: str | None) -> dict:
        result = self.searcher.search_bytes_or_path(data, options, query=name, locate=locate)
        self.metrics.observe_stages("photo", result.timings)
        return self._with_cards(result.to_dict())

    def search_text(self, text: str, options: SearchOptions) -> dict:
        result = self.searcher.search_text(text, options, self._text())
        self.metrics.observe_stages("text", result.timings)
        return self._with_cards(result.to_dict())

    def _with_cards(self, answer: dict) -> dict:
        """Each match with what its card shows (`--display`): the ranking itself never reads manifest fields."""
        from search.cards import with_cards

        return with_cards(answer, self.searcher.catalogue, self.config.display)

    def has_text(self) -> bool:
        return self.searcher is not None and self.searcher.text_model() is not None

    def _text(self):
        from indexer.encoders import load_text_encoder

        with self._text_lock:
            if self._text_encoder is None:
                index = self.searcher.text_model()
                if index is None:
                    return None  # search_text says why
                device = self.config.model_loading.get("device", "auto")
                self._text_encoder = load_text_encoder(self.searcher.specs[index].model, device=device)
            return self._text_encoder

    # -- the catalogue -----------------------------------------------------------------------

    def product(self, product_id: str) -> dict | None:
        """A product's payload, its catalogue images and its store views (newest first)."""
        from indexer.colour import lab_to_hex
        from search.cards import card

        catalogue = self.searcher.catalogue
        points = catalogue.scroll((PATH, CATEGORY, META, COLOUR, SOURCE, FEEDBACK), ((PRODUCT_ID, product_id),))
        images, views = [], []
        for pid, payload in points:
            (views if payload.get(SOURCE) == STORE_SOURCE else images).append((pid, payload))
        if not images:
            return None
        images.sort(key=lambda item: item[1].get(PATH, ""))
        views.sort(key=lambda item: -(item[1].get(FEEDBACK) or {}).get("id", 0))
        first = images[0][1]

        def describe(pid: str, payload: dict) -> dict:
            dominant = (payload.get(COLOUR) or {}).get("dominant")
            return {
                "point_id": pid,
                "path": payload.get(PATH),
                "url": f"/v1/images/{pid}",
                "colour": None if not dominant else {**dominant, "hex": lab_to_hex([dominant[c] for c in "Lab"])},
            }

        return {
            "product_id": product_id,
            "category": first.get(CATEGORY),
            "meta": first.get(META) or {},
            "display": card(product_id, first.get(CATEGORY), first.get(META), self.config.display),
            "images": [describe(pid, payload) for pid, payload in images],
            "store_views": [{**describe(pid, payload), "feedback": payload.get(FEEDBACK)} for pid, payload in views],
        }

    def image_file(self, reference: str) -> Path | None:
        """The catalogue file a point id or an indexed relative path names; None unless it is an indexed
        file inside the DAM root (no traversal, no symlink leading out)."""
        import uuid

        from indexer.store import point_id

        try:
            pid = str(uuid.UUID(reference))
        except ValueError:
            pid = point_id(reference)
        payload = self.searcher.catalogue.retrieve([pid], (PATH, SOURCE)).get(pid)
        if payload and payload.get(SOURCE) == STORE_SOURCE:
            root = self.views.log.folder.resolve()  # a store view: its photo in the feedback store
        elif payload and self.searcher.root:
            root = Path(self.searcher.root).resolve()
        else:
            return None
        path = (root / payload[PATH]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    # -- feedback: confirmed photos become store views -------------------------------------------

    def record_feedback(
        self, data: bytes, name: str, product_id: str | None, box, answered, by: str | None, origin: str = "api"
    ) -> dict:
        recorded = self.views.record(data, name=name, product_id=product_id, box=box, answered=answered, origin=origin, by=by)
        self._recount()
        self.refitter.nudge()  # the refit, if one is due, runs on its own thread
        return recorded.to_dict()

    def feedback_entries(self, product_id: str | None, limit: int) -> dict:
        return {"total": len(self.views.log.entries(product_id)), "entries": self.views.listed(product_id, limit)}

    def remove_feedback(self, entry_id: int) -> dict | None:
        removed = self.views.remove(entry_id)
        self._recount()
        return None if removed is None else removed.to_dict()

    def info(self) -> dict:
        searcher = self.searcher
        record = searcher.catalogue.record()
        return {
            "collection": self.config.collection,
            "live": searcher.catalogue.name,  # the collection answering (indexer live)
            "store": self.store.describe(),
            "models": record.get("models", []),
            "runtime": [type(e.encoder).__name__ for e in searcher.encoders],
            "root": searcher.root,
            "images": searcher.catalogue.count(NOT_STORE_VIEWS),
            "store_views": searcher.catalogue.count(STORE_VIEWS),
            "feedback": len(self.views.log),
            "products": self._products,
            "categories": sorted(searcher.catalogue.facet(CATEGORY)),
            "calibration": searcher.calibration.to_metadata(),  # the one in force: its kind, source and figures
            "calibration_fits": record.get("calibration_fits", []),
            "text": self.has_text(),
            "locate": self.config.locate,
            "storage": searcher.catalogue.settings().to_dict(),
            "watch": {"folder": str(self.config.watch), **self.watch_state} if self.config.watch else None,
            "workers": self.config.workers,
            "queue": self.config.queue,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def _count_products(self) -> None:
        try:
            self._products = len({payload.get(PRODUCT_ID) for _pid, payload in self.searcher.catalogue.scroll((PRODUCT_ID,))})
        except CatalogueError as exc:
            log.warning("cannot count products: %s", exc)
        self._recount()

    def _recount(self) -> None:
        """The collection's counts on /metrics, set after the load, each watch pass and each feedback change."""
        catalogue = self.searcher.catalogue
        try:
            counts = {"points": catalogue.count(), "store_views": catalogue.count(STORE_VIEWS), "feedback": len(self.views.log)}
        except Exception as exc:  # noqa: BLE001 - a count never fails the feedback or the pass it follows
            log.warning("cannot count the collection: %s", exc)
            return
        self.metrics.counted(self.config.collection, products=self._products, **counts)

    # -- keeping the index fresh --------------------------------------------------------------

    def _watch(self) -> None:
        """Poll the DAM folder; when its listing changes, run the incremental sync with the loaded models.

        A refused pass (a folder that lost most of the collection: a wrong mount) changes nothing, is
        logged once and keeps the server answering from the collection as it was; it is tried again when
        the folder changes. Files that fail are tried again every pass but logged only when new or changed.
        """
        from indexer.errors import OptionError

        last = None
        said = None  # the last error logged: the same error is not logged every pass
        while not self._stop.wait(self.config.watch_interval):
            listing = None
            try:
                from indexer.scan import scan

                scanned = scan(self.config.watch)
                listing = [(s.relative, s.size, s.mtime_ns) for s in scanned.images] + scanned.failed
                if listing == last:
                    continue
                report = self._sync(self.searcher.catalogue, scanned, encoders=[e.encoder for e in self.searcher.encoders])
                last = listing if not report.failed else None  # bad files are retried
                said = None
                self.searcher.root = self.searcher.catalogue.record().get("root")
                self._count_products()
            except ShuttingDown:
                return
            except CatalogueError as exc:
                self.metrics.watch_errors.inc()
                self.watch_state = {**self.watch_state, "last_error": str(exc), "at": time.time()}
                if isinstance(exc, OptionError):
                    last = listing  # a refusal: nothing to retry until the folder changes
                if str(exc) != said:
                    log.warning("watch: %s", exc)
                    said = str(exc)
            except Exception as exc:  # keep watching; the log has the traceback
                self.metrics.watch_errors.inc()
                self.watch_state = {**self.watch_state, "last_error": f"internal error ({type(exc).__name__})", "at": time.time()}
                if repr(exc) != said:
                    log.exception("watch: sync failed")
                    said = repr(exc)

    def _sync(self, catalogue, scanned=None, encoders=None):
        from indexer.scan import scan
        from indexer.sync import sync

        folder = self.config.watch
        scanned = scan(folder) if scanned is None else scanned
        loader = None
        if encoders:
            by_model = {e.model_id: e for e in encoders}

            def loader(model, **_options):
                return by_model[model]

        started = time.perf_counter()
        options = {"encoder_loader": loader} if loader else {}
        options["progress"] = self._halt_if_stopping
        report = sync(
            folder,
            scanned,
            catalogue,
            model=self.config.model,
            max_delete=self.config.max_delete,
            **self.config.model_loading,
            **options,
        )
        if report.returned and self.searcher is not None:
            # Products back in the DAM get back the store views set aside when they left.
            report.views_restored = self.views.restore(products=set(report.returned))["restored"]
        changed = report.added + report.updated + report.deleted
        self.watch_state = {
            "last_sync": time.time(),
            "added": report.added,
            "updated": report.updated,
            "deleted": report.deleted,
            "failed": len(report.failed),
            "store_views_set_aside": report.views_removed,
            "store_views_restored": report.views_restored,
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.metrics.synced(self.watch_state)
        fresh = self._new_failures(scanned, report.failed)
        if changed or fresh:
            log.info(
                "watch: synced %s: %d added, %d updated, %d deleted, %d failed",
                folder,
                report.added,
                report.updated,
                report.deleted,
                len(report.failed),
            )
        for path, error in fresh:
            log.warning("watch: failed: %s: %s", display_path(path), error)
        return report

    def _new_failures(self, scanned, failed: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The failures not logged yet: a file that keeps failing is logged once, then again only when it changes."""
        stamps = {s.relative: (s.size, s.mtime_ns) for s in scanned.images}
        now = {path: (stamps.get(path), error) for path, error in failed}
        fresh = [(path, error) for path, error in failed if self._failing.get(path) != now[path]]
        self._failing = now
        return fresh


def _settle(answer: Future, *, result=None, exception: BaseException | None = None) -> None:
    """Give `answer` its result or exception, unless it has one already (abandoned at a stop, or cancelled)."""
    try:
        if exception is not None:
            answer.set_exception(exception)
        else:
            answer.set_result(result)
    except InvalidStateError:
        pass
