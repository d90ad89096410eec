"""`search serve`: the search pipeline over HTTP (search.serve), started with the options of `search image`
and its own: where it listens, what it admits, what it watches."""

from __future__ import annotations

from pathlib import Path

import click

from catalogue_cli.options import (
    LocateOptions,
    ModelOptions,
    SettingOption,
    StoreOptions,
    locate_options,
    max_delete_option,
    model_options,
    option_group,
    store_options,
)
from indexer import settings
from search.serve.config import ServeConfig


def _serving(**values) -> dict:
    """The ServeConfig fields the serve options give (those left unset keep ServeConfig's defaults)."""
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise click.UsageError("give --tls-cert and --tls-key together")
    values["batch_wait"] = values.pop("batch_wait_ms") / 1000
    values["cors_origins"] = tuple(values["cors_origins"])
    return {field: value for field, value in values.items() if value is not None}


class FieldNames(click.ParamType):
    """FIELD,... as a tuple of names (a setting's default arrives parsed already)."""

    name = "FIELD,..."

    def convert(self, value, param, ctx):
        return value if isinstance(value, tuple) else settings.names(value)


def _limit(name: str, setting: str, kind: click.ParamType, help_text: str) -> click.Option:
    """An option whose default is a setting (ServeConfig's default too)."""
    return click.option(name, cls=SettingOption, setting=setting, type=kind, help=help_text)


def _fixed(name: str, field: str, kind: click.ParamType, help_text: str, scale: float = 1) -> click.Option:
    return click.option(name, type=kind, default=getattr(ServeConfig, field) * scale, show_default=True, help=help_text)


serve_options = option_group(
    "serving",
    _serving,
    [
        _limit("--host", "host", click.STRING, "Address to listen on; 0.0.0.0 for every interface."),
        _limit("--port", "port", click.IntRange(1, 65535), "Port."),
        _limit(
            "--workers", "workers", click.IntRange(1, 64), "Searches run at once (their model forwards are batched together)."
        ),
        _limit(
            "--queue",
            "queue",
            click.IntRange(0, 10_000),
            "Searches waiting beyond the workers; past that, 503 with Retry-After at once.",
        ),
        _fixed(
            "--model-threads",
            "model_threads",
            click.IntRange(1, 256),
            "Threads of one ONNX model forward; concurrent searches use the other cores.",
        ),
        _fixed("--max-batch", "max_batch", click.IntRange(1, 512), "Most images in one shared model forward."),
        _fixed(
            "--batch-wait-ms",
            "batch_wait",
            click.FloatRange(0, 100),
            "How long a forward waits for other searches to join it.",
            scale=1000,
        ),
        _limit("--max-upload-mb", "max_upload_mb", click.FloatRange(0.01, 1024), "Largest photo accepted (413 beyond)."),
        _limit(
            "--upload-budget-mb",
            "upload_budget_mb",
            click.FloatRange(0.01, 65536),
            "Bytes all uploads in flight may hold together; past it, 503 before a body is read.",
        ),
        _limit(
            "--read-timeout",
            "read_timeout",
            click.FloatRange(0.1, 3600),
            "Seconds a client has to send a whole request body (408 after).",
        ),
        click.option(
            "--cors-origin",
            "cors_origins",
            multiple=True,
            metavar="ORIGIN",
            help="Allow pages from this origin to call the API (off by default). Repeatable.",
        ),
        _limit(
            "--log-format",
            "log_format",
            click.Choice(["text", "json"]),
            "json: each log line, and each request's line, is one JSON object (for a log shipper).",
        ),
        click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate (PEM)."),
        click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key (PEM)."),
        click.option(
            "--display",
            cls=SettingOption,
            setting="display",
            shown="a name column, then category, colour, material, price",
            type=FieldNames(),
            help="Manifest fields on each card (and each match's `display`), the first as the title; `category` too.",
        ),
        click.option(
            "--watch",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Keep the collection in sync with this DAM folder while serving (new, changed and deleted images within seconds).",
        ),
        _fixed("--watch-interval", "watch_interval", click.FloatRange(0.2, 3600), "Seconds between looks at the --watch folder."),
        _fixed(
            "--stop-grace",
            "stop_grace",
            click.FloatRange(0, 600),
            "On Ctrl-C or SIGTERM, seconds running searches get to finish (waiting ones get 503 at once).",
        ),
    ],
)


@click.command()
@serve_options
@model_options()
@locate_options
@max_delete_option
@store_options
def serve(serving: dict, model: ModelOptions, locate: LocateOptions, max_delete, store: StoreOptions) -> None:
    """Serve search over HTTP: a JSON API and a page for store staff at /.

    Loads the models and opens the store once; answers /healthz at once and
    /readyz when ready. Protect it with CATALOGUE_API_KEY (clients send
    'Authorization: Bearer KEY'); the page asks for the key once. Staff
    confirmations (POST /v1/feedback: each becomes a store view that later
    searches match) take CATALOGUE_FEEDBACK_KEY when set, else the API key;
    with neither, only a server on loopback accepts them. GET /metrics is
    for Prometheus: CATALOGUE_METRICS_KEY when set, else the API key.

    \b
    Examples:
      search serve --qdrant-path ./store                 # then open http://127.0.0.1:8000/
      search serve --host 0.0.0.0 --tls-cert c.pem --tls-key k.pem
      search serve --watch ./dam                         # sync changes while serving
      curl -F image=@shelf.jpg http://127.0.0.1:8000/v1/search

    Ctrl-C or SIGTERM stops it: waiting searches get 503 at once, running
    ones get --stop-grace seconds, and it exits 0; a second signal exits at
    once (130 or 143).

    \b
    Exit codes: 0 stopped, 2 bad option or a --host not on this machine,
    4 the port is in use, 3/4/5/6 as for search image when the store or
    the models cannot be loaded.
    """
    from search.serve import run

    config = ServeConfig(
        **serving,
        qdrant_path=store.path,
        qdrant_url=store.url,
        qdrant_api_key=store.api_key,
        collection=store.collection,
        model=model.model,
        model_loading=model.loading,
        locate=locate.localiser,
        detector_options=locate.detector_options,
        max_delete=max_delete,
    )
    raise SystemExit(run(config))
