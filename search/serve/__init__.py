"""`search serve`: the models and the store loaded once, an HTTP API and a page for store staff.

- `service.py`: `Service`, what a request asks of the loaded models and store (no HTTP in it).
- `batching.py`: concurrent searches share model forwards.
- `app.py`: the FastAPI app: routes, errors, API key, request log.
- `bodies.py`: request bodies admitted before they are read, read under a deadline, bounded.
- `static/`: the page (plain HTML, CSS and JavaScript: no build step, no CDN).

`run` owns the process: it binds the port before loading anything (a port in use is one line, exit 4),
and on Ctrl-C or SIGTERM stops the service before uvicorn waits for its connections, so every client
gets an answer and the process ends in bounded time; a second signal ends it at once.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import sys

from indexer.errors import CatalogueError, OptionError, PortInUse
from search.serve.service import ServeConfig, Service

#: After the searches' grace, how long uvicorn still waits for responses to be written and uploads to end.
STOP_MARGIN = 5.0

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
    import threading

    import uvicorn

    from search.serve.app import create_app

    listener = _listen(host, port)
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

    class Server(uvicorn.Server):
        """uvicorn's server that stops the service's work before waiting for connections, and stops at once
        on a second signal (uvicorn's own forces only a second Ctrl-C, and still waits for threads)."""

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:
                _stop_at_once(sig)
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None) -> None:
            service.stop(config.stop_grace)
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=config.stop_grace + STOP_MARGIN,
        )
    )

    def stop_if_loading_fails() -> None:
        service.ready.wait(0)
        while not service.ready.is_set() and service.failure is None and not server.should_exit:
            service.ready.wait(0.2)
        if service.failure is not None:
            server.should_exit = True

    threading.Thread(target=stop_if_loading_fails, daemon=True).start()
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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
