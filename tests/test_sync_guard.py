"""A sync never wipes a collection, or its store views, because of what a folder looks like right now.

Through the real CLI (and a real `search serve --watch`), the real embedded
store and a real tiny CLIP: a folder replaced by another catalogue at the same
path, or one that lost most of its files, is refused with exit 2 and changes
nothing; store views of a product that leaves the DAM come back with it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time

import pytest
from conftest import all_points, eventually, studio_shot
from test_feedback import CONFIRMED, add, store_photo, views


def points(store) -> dict[str, str]:
    return {p.id: p.payload["path"] for p in all_points(store)}


def sync(cli, dam, store, *extra):
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json", "-q", *extra)
    return result, (json.loads(result.stdout) if result.exit_code in (0, 7) else None)


def test_another_catalogue_at_the_same_path_is_refused_and_keeps_the_store_views(synced, cli, dam, store, tmp_path):
    add(cli, store, store_photo(tmp_path / "shelf.jpg", seed=1), "--product", CONFIRMED)
    before = points(store)
    for path in list(dam.rglob("*")):
        if path.is_file():
            path.unlink()
    studio_shot(dam / "UNRELATED.png", (90, 90, 200))  # the same folder now holds another catalogue
    result, _ = sync(cli, dam, store)
    assert result.exit_code == 2, result.output
    assert "shares none of its files" in result.stderr and "--reindex" in result.stderr
    assert points(store) == before and len(views(store)) == 1
    result, _ = sync(cli, dam, store, "--dry-run")
    assert result.exit_code == 2 and points(store) == before


def test_a_sync_that_would_delete_most_of_the_collection_is_refused_until_asked(synced, cli, dam, store):
    files = sorted(p for p in dam.rglob("*") if p.is_file())
    for path in files[:10]:  # 10 of 16 images gone: a half-mounted volume, a copy still running
        path.unlink()
    before = points(store)
    result, _ = sync(cli, dam, store)
    assert result.exit_code == 2 and "10 of the 16 images" in result.stderr and "--max-delete 100%" in result.stderr
    assert points(store) == before
    result, _ = sync(cli, dam, store, "--max-delete", "9")  # a count: one too few
    assert result.exit_code == 2 and points(store) == before
    result, report = sync(cli, dam, store, "--max-delete", "100%")
    assert (result.exit_code, report["deleted"]) == (0, 10)
    assert len(points(store)) == 6


def test_deleting_up_to_the_limit_needs_no_flag(synced, cli, dam, store):
    files = sorted(p for p in dam.rglob("*") if p.is_file())
    for path in files[:8]:  # half of 16: the default allows it
        path.unlink()
    result, report = sync(cli, dam, store)
    assert (result.exit_code, report["deleted"]) == (0, 8)


@pytest.mark.parametrize("bad", ["150%", "-1", "half", "nan%", ""])
def test_bad_max_delete_values_are_usage_errors(synced, cli, dam, store, bad):
    result, _ = sync(cli, dam, store, "--max-delete", bad)
    assert result.exit_code == 2 and "--max-delete" in result.stderr and "Traceback" not in result.output


def test_store_views_of_a_product_that_leaves_the_dam_come_back_with_it(synced, cli, dam, store, tmp_path):
    entry = json.loads(add(cli, store, store_photo(tmp_path / "a.jpg", seed=5), "--product", "RED-BAG").stdout)
    [view] = views(store)
    aside = tmp_path / "RED-BAG.png"
    shutil.move(dam / "generated" / "RED-BAG.png", aside)  # the product leaves the DAM for a season
    result, report = sync(cli, dam, store)
    assert (result.exit_code, report["deleted"], report["store_views_removed"]) == (0, 1, 1)
    assert views(store) == []  # a view must not answer a product that is not in the catalogue
    shutil.move(aside, dam / "generated" / "RED-BAG.png")  # ... and comes back
    result, report = sync(cli, dam, store)
    assert (result.exit_code, report["added"], report["products_returned"], report["store_views_restored"]) == (0, 1, 1, 1)
    [back] = views(store)
    assert (back.id, back.payload["feedback"]["id"]) == (view.id, entry["id"])
    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"]
    assert [(e["id"], e["view"]) for e in listed] == [(entry["id"], True)]


def test_a_watch_pass_that_would_wipe_the_collection_is_logged_once_and_serving_goes_on(synced, serve, dam, caplog):
    client = serve(watch=dam, watch_interval=0.2)
    images = client.get("/v1/info").json()["images"]
    gone = sorted(p for p in dam.rglob("*") if p.is_file())[:12]
    photo = gone[0].read_bytes()
    with caplog.at_level(logging.WARNING, logger="catalogue.serve"):
        for path in gone:
            path.unlink()
        eventually(lambda: "--max-delete" in (client.get("/v1/info").json()["watch"].get("last_error") or ""))
        time.sleep(1.0)  # several more passes over the same folder
    assert len([r for r in caplog.records if "--max-delete" in r.getMessage()]) == 1
    assert client.get("/v1/info").json()["images"] == images
    assert client.get(f"/v1/products/{gone[0].stem}").status_code == 200
    found = client.post("/v1/search", files={"image": ("gone.jpg", photo)})
    assert found.status_code == 200 and found.json()["matches"][0]["product_id"] == gone[0].stem


def test_a_file_that_keeps_failing_under_watch_is_logged_once_until_it_changes(synced, serve, dam, caplog):
    client = serve(watch=dam, watch_interval=0.2)
    broken = dam / "BROKEN.jpg"
    with caplog.at_level(logging.INFO, logger="catalogue.serve"):
        broken.write_bytes(b"not an image at all")
        eventually(lambda: client.get("/v1/info").json()["watch"].get("failed") == 1)
        time.sleep(1.0)  # several more passes retry it
        assert len([r for r in caplog.records if "BROKEN.jpg" in r.getMessage()]) == 1
        broken.write_bytes(b"still not an image, but changed")
        eventually(lambda: len([r for r in caplog.records if "BROKEN.jpg" in r.getMessage()]) == 2)
