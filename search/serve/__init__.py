"""`search serve`: the models and the store loaded once, an HTTP API and a page for store staff.

- `service.py`: `Service`, what a request asks of the loaded models and store (no HTTP in it).
- `batching.py`: concurrent searches share model forwards.
- `app.py`: the FastAPI app: routes, errors, API key, request log.
- `bodies.py`: request bodies admitted before they are read, read under a deadline, bounded.
- `static/`: the page (plain HTML, CSS and JavaScript: no build step, no CDN).
"""

from __future__ import annotations

import ipaddress
import logging
import sys

from search.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "run"]


def run(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    feedback_key: str | None = None,
    max_upload_mb: float = 25,
    upload_budget_mb: float = 128,
    read_timeout: float = 30,
    cors_origins: tuple[str, ...] = (),
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> int:
    """Serve until interrupted; the exit code (the loading error's, when the models or store cannot load)."""
    import uvicorn

    from search.serve.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if api_key and not tls_cert and not _loopback(host):
        logging.getLogger("catalogue.serve").warning(
            "serving %s with an API key but without TLS: the key crosses the network in clear "
            "(store Wi-Fi is not a private network); add --tls-cert and --tls-key",
            host,
        )
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else (f"[{host}]" if ":" in host else host))
    config.url = f"{'https' if tls_cert else 'http'}://{local}:{port}"
    config.cert = tls_cert
    service = Service(config)
    app = create_app(
        service,
        api_key=api_key,
        feedback_key=feedback_key,
        open_feedback=_loopback(host),
        max_upload_mb=max_upload_mb,
        upload_budget_mb=upload_budget_mb,
        read_timeout=read_timeout,
        cors_origins=cors_origins,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )

    def stop_if_loading_fails() -> None:
        service.ready.wait(0)
        while not service.ready.is_set() and service.failure is None and not server.should_exit:
            service.ready.wait(0.2)
        if service.failure is not None:
            server.should_exit = True

    import threading

    threading.Thread(target=stop_if_loading_fails, daemon=True).start()
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for whoever handled it
    # before: a stop asked for (docker stop, Ctrl-C) is a clean exit here, not a death by signal.
    import signal

    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda *_args: None)
    server.run()
    if service.failure is not None:
        print(f"Error: {service.failure}", file=sys.stderr)
        return service.failure.exit_code
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
