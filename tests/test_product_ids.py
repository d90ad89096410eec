"""Product ids as a brand spells them ('/', '%', '?', '#', '..', spaces, unicode, '+', ',', very long),
from a manifest, through every route that carries one: a real `search serve` over a real store.

Any id up to 256 characters is supported; a longer manifest id is refused at sync with one line.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import DATA, error_of, serve_holding

#: One catalogue image each (tests/data/dam, in sorted order); every one is an id a URL mangles unless encoded.
IDS = [
    "AB/12",
    "/LEAD/TRAIL/",
    "50%OFF",
    "%2F",
    "WHAT?x=1&y=2",
    "C#7",
    "TWO  WORDS ",  # the manifest strips the trailing space: the id is "TWO  WORDS"
    "..",
    "../../etc/passwd",
    "ÉTÉ-靴-👜",
    "A+B",
    "L" * 250 + "/Ω,é.",  # 256 characters, the longest allowed, with a comma
]


def sync_hostile(model: str, folder: Path) -> tuple[str, dict[str, Path]]:
    """The test DAM synced into `folder` with a manifest giving each image one of IDS: (store, {id: image})."""
    from click.testing import CliRunner

    from catalogue_cli.indexer import main as indexer

    dam = folder / "dam"
    shutil.copytree(DATA / "dam", dam)
    images = sorted(dam.glob("*.jpeg"))
    assert len(images) == len(IDS)
    manifest = folder / "products.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "product_id", "category"])
        writer.writerows([image.name, product, "Odd/ids?"] for image, product in zip(images, IDS, strict=True))
    store = str(folder / "qdrant")
    args = ["sync", str(dam), "--model", model, "--qdrant-path", store, "--manifest", str(manifest), "--quiet"]
    result = CliRunner().invoke(indexer, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return store, {product.strip(): image for product, image in zip(IDS, images, strict=True)}


@pytest.fixture
def hostile(tmp_path, tiny_clip) -> tuple[str, dict[str, Path]]:
    return sync_hostile(tiny_clip, tmp_path)


def test_ids_with_url_hostile_characters_work_in_every_route(hostile, cli):
    store, images = hostile
    with serve_holding(store) as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            others = list(images)
            for n, (product, image) in enumerate(images.items()):
                photo = image.read_bytes()
                found = client.post("/v1/search", files={"image": (image.name, photo, "image/jpeg")}, params={"top_k": 12})
                assert found.status_code == 200, found.text
                assert product in [m["product_id"] for m in found.json()["matches"]]  # the tiny model ties look-alikes

                by_query = client.get("/v1/products", params={"product_id": product})
                assert by_query.status_code == 200, (product, by_query.text)
                body = by_query.json()
                assert body["product_id"] == product and [i["path"] for i in body["images"]] == [image.name]
                assert client.get(body["images"][0]["url"]).content == photo
                # The path form: every character percent-encoded, dots too (clients rewrite literal '.' segments).
                by_path = client.get("/v1/products/" + quote(product, safe="").replace(".", "%2E"))
                assert by_path.status_code == 200, (product, by_path.text)
                assert by_path.json() == body

                # Feedback names the product in its query; what the search showed goes one id per parameter.
                shown = [product, others[(n + 1) % len(others)]]
                saved = client.post(
                    "/v1/feedback",
                    params=[("product_id", product), *(("answered", shown_id) for shown_id in shown)],
                    files={"image": ("shelf.jpg", photo, "image/jpeg")},
                )
                assert saved.status_code == 201, (product, saved.text)
                entry = saved.json()
                assert entry["product_id"] == product and entry["answered"] == shown and entry["verdict"] == "confirmed"
                listed = client.get("/v1/feedback", params={"product_id": product}).json()["entries"]
                assert [e["id"] for e in listed] == [entry["id"]]
                views = client.get("/v1/products", params={"product_id": product}).json()["store_views"]
                assert len(views) == 1 and client.get(views[0]["url"]).status_code == 200
                assert client.delete(f"/v1/feedback/{entry['id']}").status_code == 200
                assert client.get("/v1/products", params={"product_id": product}).json()["store_views"] == []

            # A lone id holding a comma is not split when the list is marked as one id per parameter.
            longest = IDS[-1]
            saved = client.post(
                "/v1/feedback",
                params=[("product_id", "AB/12"), ("answered", longest), ("answered", "")],
                files={"image": ("shelf.jpg", images["AB/12"].read_bytes(), "image/jpeg")},
            )
            assert saved.status_code == 201 and saved.json()["answered"] == [longest]
            assert saved.json()["verdict"] == "corrected"

            # An unknown id with a '/' is the product's 404, in either form, not a route's.
            assert "no product 'NO/SUCH'" in error_of(client.get("/v1/products/NO%2FSUCH"), 404)
            assert "no product 'NO/SUCH'" in error_of(client.get("/v1/products", params={"product_id": "NO/SUCH"}), 404)
            refused = client.post(
                "/v1/feedback", params={"product_id": "NO/SUCH"}, files={"image": ("x.jpg", b"x", "image/jpeg")}
            )
            assert refused.status_code in (404, 422)

        # The CLI hands the same ids to the server that holds the store.
        photo = images["ÉTÉ-靴-👜"]
        added = cli("indexer", "feedback", "add", photo, "--product", "ÉTÉ-靴-👜", "--qdrant-path", store, "--json")
        assert added.exit_code == 0, added.output
        assert json.loads(added.stdout)["product_id"] == "ÉTÉ-靴-👜"
        listed = cli("indexer", "feedback", "list", "--product", "ÉTÉ-靴-👜", "--qdrant-path", store, "--json")
        assert listed.exit_code == 0, listed.output
        assert [e["product_id"] for e in json.loads(listed.stdout)["entries"]] == ["ÉTÉ-靴-👜"]


def test_a_manifest_id_longer_than_the_api_takes_is_refused_with_one_line(cli, tmp_path, tiny_clip):
    dam = tmp_path / "dam"
    shutil.copytree(DATA / "dam", dam)
    manifest = tmp_path / "products.csv"
    long = "X" * 250 + "/" + "Y" * 6  # 257 characters
    rows = [
        ["file", "product_id"],
        ["M3550HLEZJM900.jpeg", "FINE/ID"],
        ["S0949HAQRJM042.jpeg", "A\nB"],
        ["KCQ858SBXS70K.jpeg", long],
    ]
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    store = tmp_path / "qdrant"
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--manifest", manifest)
    assert result.exit_code == 3, result.output
    (line,) = result.stderr.strip().splitlines()  # line 5: the cell before spans two lines
    assert line == (
        f"Error: manifest {manifest} line 5: product id {long[:40]!r}... is 257 characters long; a product id is at most 256;"
        " fix the manifest and run again (nothing was changed)"
    )
    assert "Traceback" not in result.output and not store.exists()  # nothing was written
