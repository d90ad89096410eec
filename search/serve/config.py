"""`ServeConfig`: everything `search serve` is started with, and every serve default, once.

The command line builds one, `run(config)` serves it and `create_app` reads it
from its `Service`. A light module (no models, no engine): the CLI may take
its option defaults from these fields before anything heavy is imported.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.sync import DeleteLimit


def _setting(name: str):
    """A default that is a setting (indexer/settings.py holds its value and its variable)."""
    from indexer import settings

    return field(default_factory=lambda: settings.get(name))


def _default_max_delete() -> DeleteLimit:
    from indexer.sync import DEFAULT_MAX_DELETE  # imported here: indexer.sync loads numpy and the image stack

    return DEFAULT_MAX_DELETE


@dataclass
class ServeConfig:
    """Everything `search serve` was started with."""

    # The store and the models.
    qdrant_path: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = _setting("qdrant_api_key")  # the Qdrant server's key, not this service's
    collection: str = "catalogue"
    model: str | None = None
    model_loading: dict = field(default_factory=dict)  # device, runtime, cache_dir
    locate: str = "centre"
    detector_options: dict = field(default_factory=dict)
    display: tuple[str, ...] = _setting("display")  # manifest fields on each card, the first as the title (cards.py)
    # Searches: a bounded pool, their forwards batched together.
    workers: int = _setting("workers")
    queue: int = _setting("queue")
    max_batch: int = 32
    batch_wait: float = 0.002  # seconds
    model_threads: int | None = 1  # threads of one forward; concurrent searches use the other cores
    # Keeping the collection in sync with a DAM folder.
    watch: Path | None = None
    watch_interval: float = 2.0
    max_delete: DeleteLimit = field(default_factory=_default_max_delete)  # a watch pass deleting more is refused
    stop_grace: float = 5.0  # on a stop, how long running searches get to finish
    # Refitting the confidence on the store's answers (search/refit.py).
    refit_after: int = _setting("refit_after")  # answers naming a product before the first refit; 0: never
    refit_every: int = _setting("refit_every")  # new such answers before the next
    refit_quiet: float = 5.0  # seconds without a new answer before a refit starts
    # HTTP: where it listens, who may call it, and the bodies it reads.
    host: str = _setting("host")
    port: int = _setting("port")
    api_key: str | None = _setting("api_key")  # every /v1/ route asks for it
    feedback_key: str | None = _setting("feedback_key")  # /v1/feedback asks for it instead
    metrics_key: str | None = _setting("metrics_key")  # /metrics asks for it instead
    open_feedback: bool | None = None  # feedback without any key; None: only when `host` is loopback
    cors_origins: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    max_upload_mb: float = _setting("max_upload_mb")
    upload_budget_mb: float = _setting("upload_budget_mb")  # what all uploads in flight may hold together
    read_timeout: float = _setting("read_timeout")  # seconds a client has to send a whole body
    log_format: str = _setting("log_format")  # text, or json: one object per line
    url: str | None = None  # where this server answers, announced in an embedded store (handoff.py); set by `run`

    @property
    def loopback(self) -> bool:
        """Whether it listens on loopback only: no other machine can call it."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
