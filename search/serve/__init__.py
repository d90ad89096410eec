"""`search serve`: the models and the store loaded once, an HTTP API and a page for store staff.

- `service.py`: `Service`, what a request asks of the loaded models and store (no HTTP in it).
- `batching.py`: concurrent searches share model forwards.
- `config.py`: `ServeConfig`, everything it is started with and every serve default.
- `app.py`: `create_app`, the FastAPI app put together from the routers in `routes/` (one per area),
  the shared `dependencies.py` (service, keys, body gate), `errors.py` (one line of JSON) and
  `requestline.py` (request id, one log line per request); `uploads.py` reads a request's photo.
- `metrics.py`: `Metrics`, what GET /metrics shows (Prometheus), one registry per service.
- `bodies.py`: request bodies admitted before they are read, read under a deadline, bounded.
- `handoff.py`: a command-line search or feedback asks the server that holds the embedded store.
- `static/`: the page (plain HTML, CSS and JavaScript: no build step, no CDN).

`run` owns the process: it binds the port before loading anything (a port in use is one line, exit 4),
and on Ctrl-C or SIGTERM stops the service before uvicorn waits for its connections, so every client
gets an answer and the process ends in bounded time; a second signal ends it at once.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import sys

from indexer.errors import CatalogueError, OptionError, PortInUse
from search.serve.config import ServeConfig

#: After the searches' grace, how long uvicorn still waits for responses to be written and uploads to end.
STOP_MARGIN = 5.0

__all__ = ["ServeConfig", "run"]


def run(config: ServeConfig) -> int:
    """Serve until interrupted; the exit code (the loading error's, when the models or store cannot load)."""
    from search.serve.app import create_app
    from search.serve.requestline import configure_logging
    from search.serve.service import Service

    listener = _listen(config.host, config.port)
    configure_logging(config.log_format)
    _warn_if_key_in_clear(config)
    service = Service(dataclasses.replace(config, url=_local_url(config)))
    server = _server(create_app(service), service)
    _stop_if_loading_fails(service, server)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for whoever handled it
    # before: a stop asked for (docker stop, Ctrl-C) is a clean exit here, not a death by signal.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda *_args: None)
    server.run(sockets=[listener])
    for stop in (signal.SIGINT, signal.SIGTERM):  # from here on, a signal is a second one
        signal.signal(stop, lambda sig, _frame: _stop_at_once(sig))
    code = 0
    if service.failure is not None:
        print(f"Error: {service.failure}", file=sys.stderr)
        code = service.failure.exit_code
    if service.stragglers:  # a thread stuck in a forward or a sync would hold the interpreter's exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _warn_if_key_in_clear(config: ServeConfig) -> None:
    if config.api_key and not config.tls_cert and not config.loopback:
        logging.getLogger("catalogue.serve").warning(
            "serving %s with an API key but without TLS: the key crosses the network in clear "
            "(store Wi-Fi is not a private network); add --tls-cert and --tls-key",
            config.host,
        )


def _local_url(config: ServeConfig) -> str:
    """Where a command on this machine reaches the server (announced in an embedded store: handoff.py)."""
    host = config.host
    local = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else (f"[{host}]" if ":" in host else host))
    return f"{'https' if config.tls_cert else 'http'}://{local}:{config.port}"


def _server(app, service):
    """uvicorn's server for `app`, which stops the service's work before waiting for connections, and stops at
    once on a second signal (uvicorn's own forces only a second Ctrl-C, and still waits for threads)."""
    import uvicorn

    config = service.config

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:
                _stop_at_once(sig)
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None) -> None:
            service.stop(config.stop_grace)
            await super().shutdown(sockets)

    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
            access_log=False,
            log_level="warning",
            log_config=None if config.log_format == "json" else uvicorn.config.LOGGING_CONFIG,  # json: through ours
            timeout_graceful_shutdown=config.stop_grace + STOP_MARGIN,
        )
    )


def _stop_if_loading_fails(service, server) -> None:
    """Watch the loading in the background: when it fails, the server stops (and `run` reports why)."""
    import threading

    def watch() -> None:
        service.ready.wait(0)
        while not service.ready.is_set() and service.failure is None and not server.should_exit:
            service.ready.wait(0.2)
        if service.failure is not None:
            server.should_exit = True

    threading.Thread(target=watch, daemon=True).start()


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (before the models load), or the reason in one line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may reuse the port at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _bind_error(exc, host, port) from None
    return sock


def _bind_error(exc: OSError, host: str, port: int) -> CatalogueError:
    if isinstance(exc, socket.gaierror):
        return OptionError(f"--host {host}: unknown host name ({exc.strerror}); give an address, e.g. 127.0.0.1 or 0.0.0.0")
    if exc.errno == errno.EADDRINUSE:
        return PortInUse(f"port {port} on {host} is in use by another process; stop it, or choose another --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return OptionError(
            f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine only), "
            "0.0.0.0 (every interface) or one of its own addresses"
        )
    if exc.errno == errno.EACCES:
        return OptionError(f"--port {port}: not allowed to listen on it (ports below 1024 need privileges); choose another")
    return CatalogueError(f"cannot listen on {host} port {port}: {exc.strerror or exc}")


def _stop_at_once(sig: int) -> None:
    """A second Ctrl-C or SIGTERM: exit now, with the code of a death by that signal (work in flight is dropped;
    the store's lock goes with the process)."""
    os.write(2, f"Stopped at once (a second {signal.Signals(sig).name}): work still running was dropped\n".encode())
    os._exit(128 + sig)
