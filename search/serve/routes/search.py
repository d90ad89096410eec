"""POST /v1/search (a photo) and /v1/search/text (a description): the same JSON as `search image --json`.

Their options are SearchOptions' fields under the same names (the filters as
repeated `filter`), with SearchOptions' defaults, checked by `make_options`:
the command line and the hand-off (`handoff.query_of`) build the same object.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import OptionError
from search.options import SearchOptions, make_options
from search.serve import bodies, uploads
from search.serve.dependencies import ServiceDep, admitted, api_key, photo_place
from search.serve.errors import ApiError

#: Localisers a request may ask for, besides the one the server was started with.
WEB_LOCALISERS = ("centre", "none", "proposals")
MAX_TEXT = 300
#: A JSON body (a text query) is small: its text is at most MAX_TEXT characters.
MAX_JSON_BODY = 64 * 1024

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Depends(api_key)])
json_place = admitted(lambda _request: MAX_JSON_BODY)


class TextQuery(BaseModel):
    model_config = ConfigDict(strict=True)  # true is not a number, "10" is not a count

    text: str = Field(min_length=1, max_length=MAX_TEXT, description="What to look for, e.g. 'black saddle bag'.")
    top_k: int = SearchOptions.top_k
    candidates: int = SearchOptions.candidates
    filters: list[str] = Field(default_factory=list, description="KEY=VALUE payload filters, all must hold.")


@router.post("", summary="Name the product(s) in a photo.")
async def search(
    request: Request,
    service: ServiceDep,
    top_k: int = Query(SearchOptions.top_k, description="Products to return per located product."),
    candidates: int = Query(SearchOptions.candidates, description="Nearest catalogue images re-scored."),
    alpha: float = Query(SearchOptions.alpha, description="Weight of the colour bonus."),
    threshold: float = Query(SearchOptions.threshold, description="CIELAB distance beyond which colour gives no bonus."),
    colour: bool = Query(SearchOptions.colour, description="false: rank by cosine only."),
    filter: list[str] = Query(list(SearchOptions.filters), description="KEY=VALUE payload filter, repeatable (all must hold)."),
    locate: str | None = Query(None, description="centre, none or proposals (owlv2 when the server was started with it)."),
    min_confidence: float = Query(SearchOptions.min_confidence, description="Below this the answer is flagged not confident."),
    store_views: bool = Query(
        SearchOptions.store_views, description="false: match catalogue images only, not store photos staff confirmed."
    ),
    _place: None = photo_place,
):
    options = make_options(
        top_k=top_k,
        candidates=candidates,
        alpha=alpha,
        threshold=threshold,
        colour=colour,
        filters=filter,
        min_confidence=min_confidence,
        store_views=store_views,
    )
    allowed = {*WEB_LOCALISERS, service.config.locate}
    if locate is not None and locate not in allowed:
        raise OptionError(f"locate {locate!r}: choose one of {', '.join(sorted(allowed))}")
    data, name = await uploads.photo(request)
    result = await asyncio.wrap_future(service.submit(service.search_upload, data, name, options, locate))
    request.state.timings = result["timings_ms"]
    return _image_urls(result)


@router.post(
    "/text",
    summary="Products matching a description (CLIP-family models).",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": TextQuery.model_json_schema()}}}},
)
async def search_text(request: Request, service: ServiceDep, _place: None = json_place):
    body = await bodies.read_json(request, MAX_JSON_BODY, service.config.read_timeout)
    query = _validated(TextQuery, body)
    options = make_options(top_k=query.top_k, candidates=query.candidates, filters=query.filters, colour=False)
    if service.ready.is_set() and not service.has_text():
        raise ApiError(
            400,
            "this collection's model has no text tower: text search needs a CLIP model such as patrickjohncyh/fashion-clip",
        )
    result = await asyncio.wrap_future(service.submit(service.search_text, query.text.strip(), options))
    request.state.timings = result["timings_ms"]
    return _image_urls(result)


def _validated(model: type[BaseModel], value: object) -> BaseModel:
    """`value` as `model`, or the 422 that names each field at fault."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _image_urls(result: dict) -> dict:
    """A search's answer over HTTP: each match's `image` is its URL on this server, not a path on its disk
    (`path` stays relative to the DAM root, or to the feedback store for a store view)."""
    for matches in (result["matches"], *(group["matches"] for group in result["groups"])):
        for match in matches:
            match["image"] = f"/v1/images/{match['point_id']}" if match.get("point_id") else None
    return result
