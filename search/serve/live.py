"""Following the live collection: after `indexer live`, a running `search serve` answers from the new
collection within seconds, without a restart and without a failed request.

The name it serves (`--collection`) is looked up every `FOLLOW_INTERVAL`
(live.json in an embedded store, the alias on a Qdrant server). When it
points elsewhere, the new collection is opened and its models loaded and
warmed up beside the old ones while the old ones keep answering, and the
photos staff confirmed during its build become its store views; then one
reference swap (`Service.adopt`) sends new searches to it. Searches admitted
before the swap finish on the old collection, and only then are its
encoders closed and the collection released (its lock too), so another
process may use or drop it. A switch that cannot be followed (the
collection is being written by a sync, its model does not load) is logged
and the old collection keeps answering; it is tried again after
`RETRY_AFTER`, or at once if the name moves again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import wait

from indexer.errors import CatalogueError

log = logging.getLogger("catalogue.serve")
#: Seconds between two looks at which collection the served name points to.
FOLLOW_INTERVAL = 1.0
#: Seconds before a switch that failed is tried again.
RETRY_AFTER = 30.0
#: Seconds the old collection waits for the searches still running on it before it is closed anyway.
RETIRE_WAIT = 120.0


def follow(service) -> None:
    """The service's follower thread: until the service stops."""
    failed: tuple[str, float] | None = None  # (collection, when) of the last switch that failed
    said = None
    while not service._stop.wait(FOLLOW_INTERVAL):
        try:
            target = service.store.resolve(service.config.collection)
        except CatalogueError as exc:
            if str(exc) != said:
                log.warning("follow: %s", exc)
                said = str(exc)
            continue
        if target == service.searcher.catalogue.name:
            continue
        if failed and failed[0] == target and time.monotonic() - failed[1] < RETRY_AFTER:
            continue
        try:
            switch(service, target)
            failed, said = None, None
        except CatalogueError as exc:
            failed = (target, time.monotonic())
            log.warning("follow: still answering from %r; cannot switch to %r: %s", service.searcher.catalogue.name, target, exc)
        except Exception:  # a bug: keep answering from the old collection; the log has the traceback
            failed = (target, time.monotonic())
            log.exception("follow: switching to %r failed", target)


def switch(service, target: str) -> None:
    """Load `target` beside the live collection, swap, then retire the old one once its searches are done."""
    old = service.searcher
    started = time.perf_counter()
    catalogue = service.store.collection(service.config.collection)
    if catalogue.name != target:  # moved again meanwhile: the next look follows
        return
    # The new collection's own models (another model is the usual reason for a switch).
    searcher, views = service.pipeline(catalogue, None)
    caught_up = _catch_up(catalogue, views)
    if service._stop.is_set():
        _retire(service, searcher, None)
        return
    before = service.adopt(searcher, views)
    log.info(
        "live: answering from collection %r (%s) instead of %r, loaded in %.1f s (%d store view(s) caught up)",
        catalogue.name,
        ", ".join(spec.model for spec in searcher.specs),
        old.catalogue.name,
        time.perf_counter() - started,
        caught_up,
    )
    threading.Thread(target=service._count_products, name="count-products", daemon=True).start()
    _announce(service)
    wait(before, timeout=RETIRE_WAIT)
    _retire(service, old, old.catalogue.name)


def _catch_up(catalogue, views) -> int:
    """Photos confirmed while the new collection was being built, after its store views were made, become
    views in it too (their products' views made again with its model); how many were restored."""
    from datetime import UTC, datetime

    since = catalogue.record().get("views_at")
    if not since:
        return 0
    stamp = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    products = {e.product_id for e in views.log.entries() if e.product_id and e.created >= stamp}
    if not products:
        return 0
    restored = views.restore(products=products)["restored"]
    catalogue.update_metadata(views_at=time.time())
    return restored


def _retire(service, searcher, name: str | None) -> None:
    """Close a searcher's encoders and release its collection, unless it is live again."""
    for encoder in searcher.encoders:
        encoder.close()
    if name is not None and name != service.searcher.catalogue.name and hasattr(service.store, "release"):
        service.store.release(name)


def _announce(service) -> None:
    """The handoff announcement names the DAM root: the new collection may have another."""
    if service.config.url and not service.config.qdrant_url:
        from indexer.store.schema import CATALOGUE_SOURCE, STORE_SOURCE
        from search.serve import handoff

        roots = {CATALOGUE_SOURCE: service.searcher.root, STORE_SOURCE: service.searcher.views_root}
        handoff.announce(service.store.root, service.config.url, service.config.tls_cert, roots)
