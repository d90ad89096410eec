"""Product cards: what `/v1/search` and `/v1/products` say each product is, from the manifest's fields.

`search serve --display FIELD,...` (or CATALOGUE_DISPLAY) names them, the first as the title; without
it a default rule picks a name column, then category, colour, material, price. A real app over a real
store synced with a manifest; the page's rendering of the same answers is tests/test_page.py's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from indexer import settings

MARKUP = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
#: product -> its manifest row (category, Name, colour, material, price): BLUE-BAG has no name and no price.
ROWS = {
    "RED-BAG": ("W Bags", MARKUP, "Red", "Calfskin", "1 200 €"),
    "BLUE-BAG": ("W Bags", "", "Blue", "Canvas", ""),
    "GREEN-SHOE": ("W Shoes", "Trainer " + "verylong" * 20, "Green", "", "640 €"),
    "BLACK-BELT": ("W Accessories", "Saddle belt", "Black", "Leather", "390 €"),
}


@pytest.fixture
def with_manifest(cli, dam, store, tiny_clip, tmp_path) -> str:
    """The test DAM synced with a manifest of names, colours, materials and prices (columns as a brand spells them)."""
    manifest = tmp_path / "products.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["product_id", "category", "Name", "colour", "material", "price"])
        writer.writerows([product, *row] for product, row in ROWS.items())
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--manifest", manifest, "--quiet")
    assert result.exit_code == 0, result.output
    return store


def search(client, photo: Path, **params) -> dict:
    response = client.post("/v1/search", params={"top_k": 16, **params}, files={"image": (photo.name, photo.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()


def cards(answer: dict) -> dict[str, dict]:
    """product -> its `display`, over every match of the answer (top-level and per group): all must agree."""
    shown: dict[str, dict] = {}
    for match in [*answer["matches"], *(m for group in answer["groups"] for m in group["matches"])]:
        assert shown.setdefault(match["product_id"], match["display"]) == match["display"]
    return shown


def test_each_match_carries_the_fields_the_operator_chose_in_order(with_manifest, serve, dam):
    client = serve(display=("Name", "price", "colour", "category"))
    shown = cards(search(client, dam / "generated" / "BLACK-BELT.JPG"))
    assert shown["BLACK-BELT"] == {
        "title": "Saddle belt",
        "fields": [
            {"name": "price", "value": "390 €"},
            {"name": "colour", "value": "Black"},
            {"name": "category", "value": "W Accessories"},
        ],
    }
    # Missing fields are left out; a missing title falls back to the product code.
    assert shown["BLUE-BAG"] == {
        "title": "BLUE-BAG",
        "fields": [{"name": "colour", "value": "Blue"}, {"name": "category", "value": "W Bags"}],
    }
    assert shown["RED-BAG"]["title"] == MARKUP  # data, not markup: the page sets it as text
    # A product the manifest does not name has only its code.
    assert shown["KCQ858SBXS70K"] == {"title": "KCQ858SBXS70K", "fields": []}

    product = client.get("/v1/products", params={"product_id": "GREEN-SHOE"}).json()
    assert product["display"] == {
        "title": ROWS["GREEN-SHOE"][1],
        "fields": [
            {"name": "price", "value": "640 €"},
            {"name": "colour", "value": "Green"},
            {"name": "category", "value": "W Shoes"},
        ],
    }
    assert product["meta"]["Name"] == ROWS["GREEN-SHOE"][1]  # the existing keys are unchanged


def test_without_display_a_name_column_is_the_title_then_category_colour_material_price(with_manifest, serve, dam):
    client = serve()
    shown = cards(search(client, dam / "generated" / "RED-BAG.png"))
    assert shown["BLACK-BELT"] == {
        "title": "Saddle belt",  # the column is "Name": matched ignoring case
        "fields": [
            {"name": "category", "value": "W Accessories"},
            {"name": "colour", "value": "Black"},
            {"name": "material", "value": "Leather"},
            {"name": "price", "value": "390 €"},
        ],
    }
    assert shown["BLUE-BAG"]["title"] == "BLUE-BAG"


def test_without_a_manifest_the_title_is_the_product_code_and_nothing_fills_in(synced, serve, dam):
    client = serve(display=("name", "colour"))
    answer = search(client, dam / "generated" / "RED-BAG.png")
    assert answer["matches"] and all(m["display"] == {"title": m["product_id"], "fields": []} for m in answer["matches"])


def test_a_match_through_a_store_view_shows_its_products_fields(with_manifest, serve, tmp_path):
    import numpy as np
    from PIL import Image

    client = serve(display=("Name", "colour"))
    photo = tmp_path / "shelf.jpg"  # a photo like no catalogue image: its store view wins its next search
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(photo, quality=90)
    saved = client.post(
        "/v1/feedback", params={"product_id": "BLACK-BELT"}, files={"image": ("shelf.jpg", photo.read_bytes(), "image/jpeg")}
    )
    assert saved.status_code == 201, saved.text
    views = [m for m in search(client, photo)["matches"] if m["source"] == "store"]
    assert views and views[0]["product_id"] == "BLACK-BELT"  # a store view keeps no manifest fields of its own
    assert views[0]["display"] == {"title": "Saddle belt", "fields": [{"name": "colour", "value": "Black"}]}


def test_display_comes_from_the_flag_or_the_variable(cli, monkeypatch):
    import search.serve

    started = []
    monkeypatch.setattr(search.serve, "run", lambda config: started.append(config) or 0)
    assert cli("search", "serve", "--display", " name, colour,,name ").exit_code == 0
    monkeypatch.setenv("CATALOGUE_DISPLAY", "title,price")
    assert cli("search", "serve").exit_code == 0
    assert cli("search", "serve", "--display", "colour").exit_code == 0
    assert [config.display for config in started] == [("name", "colour"), ("title", "price"), ("colour",)]
    assert settings.effective()["display"] == {
        "value": ("title", "price"),
        "env": "CATALOGUE_DISPLAY",
        "source": "CATALOGUE_DISPLAY",
    }


def test_search_image_json_carries_the_same_cards(with_manifest, cli, dam, store, monkeypatch):
    monkeypatch.setenv("CATALOGUE_DISPLAY", "Name,material")
    printed = cli("search", "image", dam / "generated" / "BLACK-BELT.JPG", "--qdrant-path", store, "--json", "--top-k", "16")
    assert printed.exit_code == 0, printed.output
    shown = cards(json.loads(printed.stdout)[0])
    assert shown["BLACK-BELT"] == {"title": "Saddle belt", "fields": [{"name": "material", "value": "Leather"}]}
    assert shown["GREEN-SHOE"]["fields"] == []  # no material: left out
