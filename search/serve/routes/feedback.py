"""/v1/feedback: what staff say a photo shows. A confirmed product gains the photo as a store view, so
every later search answers differently: these routes take the feedback key (`dependencies.feedback_key`)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as InPath

from indexer.feedback import MAX_ID
from indexer.store.schema import MAX_PRODUCT_ID
from search.serve import uploads
from search.serve.dependencies import ServiceDep, feedback_key, photo_place
from search.serve.errors import ApiError

FEEDBACK_PATH = "/v1/feedback"
MAX_BY = 128
MAX_ANSWERED = 10

router = APIRouter(prefix=FEEDBACK_PATH, tags=["feedback"], dependencies=[Depends(feedback_key)])


@router.post("", status_code=201, summary="Record what a photo shows; it becomes a store view.")
async def add_feedback(
    request: Request,
    service: ServiceDep,
    product_id: str | None = Query(None, max_length=MAX_PRODUCT_ID, description="The product the photo shows."),
    not_in_catalogue: bool = Query(False, description="true: the product is not in the catalogue."),
    box: str | None = Query(None, description="x0,y0,x1,y1: where the product is, in pixels of the photo as decoded."),
    answered: list[str] | None = Query(
        None, description="The product ids the search answered, best first: one per parameter, or one comma-separated value."
    ),
    by: str | None = Query(None, max_length=MAX_BY, description="Who confirmed (a staff or device id)."),
    origin: Literal["api", "page", "cli"] = Query(
        "api", description="Where the answer comes from, as the caller says (page: the staff page, cli: indexer feedback)."
    ),
    _place: None = photo_place,
):
    from indexer.feedback import parse_box

    if bool(product_id) == not_in_catalogue:
        raise ApiError(422, "say what the photo shows: product_id=ID, or not_in_catalogue=true")
    located = parse_box(box)
    shown = _answered(answered)
    data, name = await uploads.photo(request)
    if product_id and service.ready.is_set() and not service.views.has_product(product_id):
        raise ApiError(404, f"no product {product_id[:80]!r} in collection {service.config.collection!r}")
    return await asyncio.wrap_future(
        service.submit(service.record_feedback, data, name, product_id or None, located, shown, by, origin)
    )


@router.get("", summary="The recorded feedback, newest first.")
async def list_feedback(
    service: ServiceDep,
    product_id: str | None = Query(None, max_length=MAX_PRODUCT_ID, description="Only this product's entries."),
    limit: int = Query(50, ge=1, le=1000, description="Newest entries returned."),
):
    return await asyncio.wrap_future(service.submit(service.feedback_entries, product_id, limit))


@router.delete("/{entry_id}", summary="Undo or prune an entry and its store view.")
async def remove_feedback(service: ServiceDep, entry_id: int = InPath(ge=1, le=MAX_ID, description="The entry's id, as listed.")):
    removed = await asyncio.wrap_future(service.submit(service.remove_feedback, entry_id))
    if removed is None:
        raise ApiError(404, f"no feedback entry {entry_id}")
    return removed


def _answered(values: list[str] | None) -> list[str] | None:
    """The ids of `answered`: repeated, each value is one id (ids may hold commas; empty ones are skipped);
    a lone value is a comma-separated list, as clients sent it first."""
    if values is None:
        return None
    ids = values[0].split(",") if len(values) == 1 else values
    return [i.strip() for i in ids if i.strip()][:MAX_ANSWERED]
