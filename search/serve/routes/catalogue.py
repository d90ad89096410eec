"""The catalogue as the server holds it: products, their images, and what the server serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from indexer.store.schema import MAX_PRODUCT_ID
from search.serve.dependencies import ServiceDep, api_key
from search.serve.errors import ApiError, hide_folders
from search.serve.service import Service

router = APIRouter(prefix="/v1", tags=["catalogue"], dependencies=[Depends(api_key)])


@router.get("/products", summary="A product's payload and images, any id.")
async def product_by_query(
    service: ServiceDep,
    product_id: str = Query(..., max_length=MAX_PRODUCT_ID, description="The product id, as the catalogue spells it."),
):
    return await _product_named(service, product_id)


# `:path`: an id may hold '/', sent as %2F. Browsers rewrite '.' and '..' segments even encoded: the page uses the query.
@router.get("/products/{product_id:path}", summary="A product's payload and images.")
async def product(product_id: str, service: ServiceDep):
    return await _product_named(service, product_id)


@router.get("/images/{reference:path}", summary="A catalogue image, by point id or indexed path.")
async def image(reference: str, service: ServiceDep):
    path = await asyncio.wrap_future(service.submit(service.image_file, reference))
    if path is None:
        raise ApiError(404, "no indexed catalogue image by that id or path")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get("/info", summary="Models, counts, categories, calibration, store.")
async def info(request: Request, service: ServiceDep):
    found = await asyncio.wrap_future(service.submit(service.info))
    found["store"] = hide_folders(found["store"], service)
    found["root"] = found["root"] and Path(found["root"]).name
    if found.get("watch"):
        found["watch"]["folder"] = Path(found["watch"]["folder"]).name
    gate = request.app.state.gate
    found["uploads"] = {"in_flight": gate.held, "bytes": gate.held_bytes, "budget": gate.budget}
    return found


async def _product_named(service: Service, product_id: str) -> dict:
    found = await asyncio.wrap_future(service.submit(service.product, product_id))
    if found is None:
        raise ApiError(404, f"no product {product_id[:80]!r} in collection {service.config.collection!r}")
    return found
