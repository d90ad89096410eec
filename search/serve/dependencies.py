"""What the routes share, injected with `Depends`: the service, its config, the keys, the body gate.

The app keeps them on `app.state` (`create_app`); a route names what it
needs (`service: ServiceDep`), and a router names the key it asks for
(`dependencies=[Depends(api_key)]`). A key is checked before anything
else, before a byte of the body is read.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from search.serve import uploads
from search.serve.config import ServeConfig
from search.serve.errors import ApiError
from search.serve.service import NotReady, Service


async def service_of(request: Request) -> Service:
    return request.app.state.service


async def config_of(request: Request) -> ServeConfig:
    return request.app.state.service.config


ServiceDep = Annotated[Service, Depends(service_of)]
ConfigDep = Annotated[ServeConfig, Depends(config_of)]


async def api_key(request: Request, config: ConfigDep) -> None:
    """Every /v1/ route but feedback: the API key, when one is set."""
    if config.api_key and not _authorised(request, config.api_key):
        raise _unauthorised("API key")


async def feedback_key(request: Request, config: ConfigDep) -> None:
    """/v1/feedback changes what every later search answers: its own key when one is set, else the API key;
    with neither, only a server that listens on loopback (or was told it may) takes it."""
    required = config.feedback_key or config.api_key
    if required and not _authorised(request, required):
        raise _unauthorised("feedback key" if config.feedback_key else "API key")
    open_feedback = config.loopback if config.open_feedback is None else config.open_feedback
    if not required and not open_feedback:
        raise ApiError(
            403,
            "feedback is off on this server: it listens beyond loopback without a key; "
            "start it with CATALOGUE_FEEDBACK_KEY (or CATALOGUE_API_KEY) set",
        )


async def metrics_key(request: Request, config: ConfigDep) -> None:
    """/metrics: its own key when one is set (a scraper needs no power to search), else the API key; with
    neither, open."""
    required = config.metrics_key or config.api_key
    if required and not _authorised(request, required):
        raise _unauthorised("metrics key" if config.metrics_key else "API key")


def admitted(limit_of: Callable[[Request], int]):
    """A route's dependency: its request holds a place for its body, and for its search, before a byte
    is read; refused at once (503) when the server is not ready or the places or the budget are taken.
    `limit_of(request)`: the largest body the request may send."""

    async def admission(request: Request, service: ServiceDep):
        if not service.ready.is_set():
            raise NotReady(str(service.failure) if service.failure else "loading the models and the store")
        with request.app.state.gate.admit(request, limit_of(request)):
            yield

    return Depends(admission)


#: The place of a request that sends a photo.
photo_place = admitted(uploads.largest_body)


def _authorised(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _unauthorised(which: str) -> ApiError:
    return ApiError(401, f"missing or wrong {which}: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})
