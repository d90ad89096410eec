"""What a product card shows: a title and a few labelled fields, from the product's manifest columns.

Staff recognise a product by its name, colour and price, not by its code. The
operator names the fields (`search serve --display name,colour,price`): the
first is the title, the others follow in that order. Without a choice, the
default rule: the first of TITLE_COLUMNS the product has (else its product
code), then those of DEFAULT_FIELDS it has. `category` is the payload's own
field; every other name is a manifest column, stored under `meta`, matched as
spelled, else ignoring case. A field a product lacks is left out, never shown
empty.

Every answer that shows products carries the card (`display` on each match of
`search serve`'s answers and of `search image --json`, and on /v1/products), so
another service shows what the page shows. Values are
plain text: the page sets them as text, never as markup.
"""

from __future__ import annotations

from indexer.store.schema import CATEGORY, META, NOT_STORE_VIEWS, PRODUCT_ID, SOURCE, STORE_SOURCE

#: Manifest columns that name a product, in order of preference: the default title.
TITLE_COLUMNS = ("name", "product_name", "title", "display_name")
#: What the default card shows under the title, when the product has it.
DEFAULT_FIELDS = (CATEGORY, "colour", "color", "material", "price")


def card(product_id: str, category: str | None, meta: dict | None, display: tuple[str, ...] = ()) -> dict:
    """`{"title": ..., "fields": [{"name": ..., "value": ...}, ...]}`: the title is never empty (the product
    code when the title field is missing), the fields are only those the product has."""
    values = {**(meta or {}), CATEGORY: category}
    if display:
        title_field, below = display[0], display[1:]
    else:
        title_field = next((name for name in TITLE_COLUMNS if _value(values, name) is not None), None)
        below = DEFAULT_FIELDS
    title = _value(values, title_field) if title_field else None
    fields = [{"name": name, "value": value} for name in below if (value := _value(values, name)) is not None]
    return {"title": title or product_id, "fields": fields}


def with_cards(answer: dict, catalogue, display: tuple[str, ...] = ()) -> dict:
    """A search's answer (`SearchResult.to_dict()`) with each match's `display`, read from the store in one go."""
    matches = [*answer["matches"], *(match for group in answer["groups"] for match in group["matches"])]
    payloads = _product_payloads(catalogue, matches)
    for match in matches:
        found = payloads.get(match["product_id"]) or {CATEGORY: match.get("category")}
        match["display"] = card(match["product_id"], found.get(CATEGORY), found.get(META), display)
    return answer


def _product_payloads(catalogue, matches: list[dict]) -> dict[str, dict]:
    """Each matched product's category and manifest fields: one retrieve of the matched points; a product
    matched through a store view (which keeps no manifest fields) is read from one of its catalogue images."""
    point_ids = sorted({match["point_id"] for match in matches if match.get("point_id")})
    found: dict[str, dict] = {}
    for payload in catalogue.retrieve(point_ids, (PRODUCT_ID, CATEGORY, META, SOURCE)).values():
        if payload.get(SOURCE) != STORE_SOURCE:
            found.setdefault(payload.get(PRODUCT_ID), payload)
    for product_id in sorted({match["product_id"] for match in matches} - found.keys()):
        for _pid, payload in catalogue.scroll((CATEGORY, META), ((PRODUCT_ID, product_id), *NOT_STORE_VIEWS), batch=1):
            found[product_id] = payload
            break
    return found


def _value(values: dict, name: str) -> str | None:
    """The field's text (the key as spelled, else ignoring case); None when missing or blank."""
    if name not in values:
        name = next((key for key in values if key.casefold() == name.casefold()), name)
    value = values.get(name)
    text = "" if value is None else str(value).strip()
    return text or None
