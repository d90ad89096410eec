"""`Metrics`: every number `GET /metrics` shows, in one registry per service (Prometheus' text format).

Names follow Prometheus' conventions: counters end in `_total`, durations are
histograms in `_seconds`, and labels are few and bounded (a route's template,
never its path; a stage; a reason). Counts of the collection are set when
they change (after the load, a watch pass, a feedback), never computed by a
scrape. The registry lives on the `Service`, not in a module global, so that
several apps in one process (the tests) each count their own.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

#: The search stages `Searcher` times (its `timings`) that are observed; the sums (features, total) are not.
STAGES = ("decode", "locate", "cutout", "embed", "colour", "query", "rank")
#: Why a request was refused with 503.
REFUSALS = ("busy", "not_ready", "shutting_down", "upload_budget")
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SYNC_OUTCOMES = ("added", "updated", "deleted", "failed")


class Metrics:
    """The service's metrics. `in_flight()` gives (running, waiting) searches, read at each scrape."""

    def __init__(self, *, admitted: int, in_flight: Callable[[], tuple[int, int]]):
        disable_created_metrics()  # a `_created` twin of every series doubles a scrape and no alert reads it
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files of this process
        self.registry.register(_InFlight(admitted, in_flight))
        self.last_sync = _LastSync()
        self.registry.register(self.last_sync)

        def metric(kind, name: str, help_text: str, labels=(), **options):
            return kind(name, help_text, labels, registry=self.registry, **options)

        self.requests = metric(Counter, "catalogue_requests", "HTTP requests answered.", ("method", "route", "status"))
        self.latency = metric(
            Histogram, "catalogue_request_duration_seconds", "Whole request time.", ("method", "route"), buckets=LATENCY
        )
        self.stages = metric(
            Histogram, "catalogue_search_stage_seconds", "Time of each search stage.", ("search", "stage"), buckets=LATENCY
        )
        self.refusals = metric(Counter, "catalogue_refusals", "Requests refused with 503, by reason.", ("reason",))
        self.batch = metric(Histogram, "catalogue_batch_size", "Inputs in one shared model forward.", buckets=BATCH)
        self.model_load = metric(Gauge, "catalogue_model_load_seconds", "Loading the models and the warm-up search.")
        self.points = metric(Gauge, "catalogue_collection_points", "Points of the collection.", ("collection",))
        self.products = metric(Gauge, "catalogue_collection_products", "Products of the collection.", ("collection",))
        self.store_views = metric(Gauge, "catalogue_store_views", "Confirmed store photos searched.", ("collection",))
        self.feedback = metric(Gauge, "catalogue_feedback_entries", "Entries of the feedback log.", ("collection",))
        self.watch_errors = metric(Counter, "catalogue_watch_errors", "Watch passes that failed or were refused.")
        for reason in REFUSALS:  # every reason shows from the start, at 0: a rate needs a first sample
            self.refusals.labels(reason)

    def observe_request(self, method: str, route: str, status: int | None, seconds: float) -> None:
        self.requests.labels(method, route, str(status or 0)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_stages(self, search: str, timings: dict[str, float]) -> None:
        """A search's `timings` (seconds), as `Searcher` gives them."""
        for stage in STAGES:
            if stage in timings:
                self.stages.labels(search, stage).observe(timings[stage])

    def counted(self, collection: str, **counts: int | None) -> None:
        """Set the collection's counts given (points, products, store_views, feedback); None: unknown, left as is."""
        for name, value in counts.items():
            if value is not None:
                getattr(self, name).labels(collection).set(value)

    def synced(self, state: dict) -> None:
        """The last sync or watch pass, as `Service.watch_state` holds it."""
        self.last_sync.state = dict(state)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the format an `Accept` header asks for, and its content type."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _InFlight:
    """Searches running and waiting, read from the service when scraped (no bookkeeping of its own)."""

    def __init__(self, admitted: int, in_flight: Callable[[], tuple[int, int]]):
        self.admitted = admitted
        self.in_flight = in_flight

    def collect(self):
        running, waiting = self.in_flight()
        searches = GaugeMetricFamily("catalogue_searches", "Work in the search pool, by state.", labels=["state"])
        searches.add_metric(["running"], running)
        searches.add_metric(["waiting"], max(0, waiting))
        yield searches
        yield GaugeMetricFamily("catalogue_searches_admitted_max", "Most searches running and waiting.", value=self.admitted)


class _LastSync:
    """The last sync or watch pass; nothing before the first (a server without --watch has none)."""

    def __init__(self):
        self.state: dict | None = None

    def collect(self):
        state = self.state
        if state is None:
            return
        yield GaugeMetricFamily("catalogue_last_sync_seconds", "Duration of the last sync or watch pass.", state["seconds"])
        files = GaugeMetricFamily("catalogue_last_sync_files", "Images of the last sync or watch pass.", labels=["outcome"])
        for outcome in SYNC_OUTCOMES:
            files.add_metric([outcome], state[outcome])
        yield files
        yield GaugeMetricFamily(
            "catalogue_last_sync_timestamp_seconds", "When the last sync or watch pass ended.", state["last_sync"]
        )


def count_refusals(app, metrics: Metrics) -> None:
    """Count each 503 refusal under its reason: the app's answer to each refusal (`errors.install`, called
    before) is wrapped, so a refusal is counted wherever it is raised (the service, the body gate, a route)."""
    from search.serve import bodies
    from search.serve.service import Busy, NotReady, ShuttingDown

    def reason_of(exc: Exception) -> str:
        if isinstance(exc, bodies.OverBudget):
            return "upload_budget"
        return "not_ready" if isinstance(exc, NotReady) else "shutting_down" if isinstance(exc, ShuttingDown) else "busy"

    for kind in (Busy, NotReady, ShuttingDown, bodies.Refused):
        answer = app.exception_handlers[kind]

        async def counted(request, exc, answer=answer):
            metrics.refusals.labels(reason_of(exc)).inc()
            return await answer(request, exc)

        app.add_exception_handler(kind, counted)
