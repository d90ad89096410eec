"""Store feedback: a confirmed store photo becomes a store view of its product (issue 12).

Through the real CLI, the real embedded store and a real tiny CLIP: what a
user notices is the answer for the next photo, what `indexer feedback list`
says, and what a re-sync keeps or removes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import all_points, error_of
from PIL import Image, ImageDraw

CONFIRMED = "M3550HLEZJM900"  # a catalogue product of tests/data/dam


def store_photo(path: Path, seed: int, colour=(120, 60, 40)) -> Path:
    """A store-like photo: a product-coloured shape on a cluttered, noisy shelf."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(40, 220, (240, 320, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, 280)), int(rng.integers(0, 200))
        draw.rectangle((x, y, x + 40, y + 30), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw.ellipse((100, 60, 220, 200), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)
    return path


def first(cli, store, photo, *extra) -> dict:
    result = cli("search", "image", photo, "--qdrant-path", store, "--json", "--top-k", "3", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]["matches"][0]


def add(cli, store, photo, *args, env=None):
    return cli("indexer", "feedback", "add", photo, "--qdrant-path", store, "--json", *args, env=env)


def views(store) -> list:
    return [p for p in all_points(store) if p.payload.get("source") == "store"]


def test_confirmed_photo_wins_its_next_search_through_a_store_view(synced, cli, store, tmp_path):
    photo = store_photo(tmp_path / "shelf.jpg", seed=1)
    before = first(cli, store, photo)
    added = add(cli, store, photo, "--product", CONFIRMED, "--by", "anna")
    assert added.exit_code == 0, added.output
    entry = json.loads(added.stdout)
    assert entry["product_id"] == CONFIRMED and entry["by"] == "anna" and entry["view"]
    assert entry["answered"][0] == before["product_id"]
    assert entry["verdict"] == ("confirmed" if before["product_id"] == CONFIRMED else "corrected")

    after = first(cli, store, photo)
    assert after["product_id"] == CONFIRMED and after["source"] == "store"
    assert Path(after["image"]).read_bytes() == photo.read_bytes()  # the reference shown is the kept photo
    without = first(cli, store, photo, "--no-store-views")
    assert (without["product_id"], without["source"]) == (before["product_id"], "catalogue")

    [view] = views(store)
    assert view.payload["product_id"] == CONFIRMED and view.payload["feedback"]["id"] == entry["id"]
    assert view.payload["colour"]["dominant"] and view.payload["category"] is None
    # The catalogue points say where they come from too (the schema contract).
    assert {p.payload.get("source") for p in all_points(store)} == {"catalogue", "store"}


def test_list_then_remove_undoes_a_confirmation(synced, cli, store, tmp_path):
    photo = store_photo(tmp_path / "shelf.jpg", seed=2)
    entry = json.loads(add(cli, store, photo, "--product", CONFIRMED).stdout)
    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)
    assert [(e["id"], e["product_id"], e["view"]) for e in listed["entries"]] == [(entry["id"], CONFIRMED, True)]
    human = cli("indexer", "feedback", "list", "--qdrant-path", store)
    assert CONFIRMED in human.stdout and "1 entry" in human.stdout
    info = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)
    assert (info["store_views"], info["feedback"]["entries"], info["images"]) == (1, 1, 16)  # views are not catalogue images

    removed = cli("indexer", "feedback", "remove", entry["id"], "--qdrant-path", store)
    assert removed.exit_code == 0 and f"Removed #{entry['id']}" in removed.stdout
    assert views(store) == []
    assert json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"] == []
    assert not list((Path(listed["folder"]) / "photos").iterdir())  # the photo is gone too
    missing = cli("indexer", "feedback", "remove", entry["id"], "--qdrant-path", store)
    assert missing.exit_code == 3 and "no feedback entry" in missing.stderr


def test_a_contradicting_answer_for_the_same_photo_replaces_the_first(synced, cli, store, tmp_path):
    photo = store_photo(tmp_path / "shelf.jpg", seed=3)
    first_entry = json.loads(add(cli, store, photo, "--product", CONFIRMED).stdout)
    moved = json.loads(add(cli, store, photo, "--product", "RED-BAG").stdout)
    assert moved["replaced"]["id"] == first_entry["id"] and moved["replaced"]["product_id"] == CONFIRMED
    assert [v.payload["product_id"] for v in views(store)] == ["RED-BAG"]
    gone = json.loads(add(cli, store, photo, "--not-in-catalogue").stdout)
    assert gone["verdict"] == "not in catalogue" and gone["view"] is None and views(store) == []
    # What the search answered is recorded without the photo's own (earlier) view.
    assert gone["answered"][0] == first(cli, store, photo)["product_id"]  # no view is left: the same search now
    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"]
    assert [e["verdict"] for e in listed] == ["not in catalogue"]


def test_each_product_keeps_its_newest_views_up_to_the_cap(synced, cli, store, tmp_path):
    env = {"CATALOGUE_MAX_STORE_VIEWS": "2"}
    entries = [
        json.loads(add(cli, store, store_photo(tmp_path / f"p{i}.jpg", seed=10 + i), "--product", CONFIRMED, env=env).stdout)
        for i in range(3)
    ]
    assert entries[2]["evicted_views"] == [entries[0]["view"]]
    assert sorted(v.payload["feedback"]["id"] for v in views(store)) == [entries[1]["id"], entries[2]["id"]]
    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"]
    assert [e["view"] for e in listed] == [True, True, False]  # the oldest stays in the log, without a view


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("--product", "NO-SUCH-PRODUCT"), 3, "no catalogue image"),
        ((), 2, "--product ID, or --not-in-catalogue"),
        (("--product", CONFIRMED, "--not-in-catalogue"), 2, "--product ID, or --not-in-catalogue"),
        (("--product", CONFIRMED, "--box", "10,10,5,5"), 2, "x0 < x1"),
        (("--product", CONFIRMED, "--box", "0,0,5000,50"), 3, "outside"),
    ],
    ids=["unknown-product", "no-answer", "both-answers", "inverted-box", "box-outside"],
)
def test_bad_feedback_is_one_line_and_records_nothing(synced, cli, store, tmp_path, args, code, words):
    result = add(cli, store, store_photo(tmp_path / "shelf.jpg", seed=4), *args)
    assert result.exit_code == code and words in result.stderr and "Traceback" not in result.output
    assert json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"] == []


def test_a_photo_that_is_not_an_image_is_exit_3(synced, cli, store, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    result = add(cli, store, bad, "--product", CONFIRMED)
    assert result.exit_code == 3 and "not an image" in result.stderr


def test_store_views_survive_a_resync_and_leave_with_their_product(synced, cli, dam, store, tiny_clip, tmp_path):
    kept = json.loads(add(cli, store, store_photo(tmp_path / "a.jpg", seed=5), "--product", CONFIRMED).stdout)
    doomed = json.loads(add(cli, store, store_photo(tmp_path / "b.jpg", seed=6), "--product", "RED-BAG").stdout)
    studio = Path(dam / "generated" / "NEW-HAT.png")
    shutil.copy(dam / "generated" / "BLUE-BAG.png", studio)  # a change: the sync has work to do
    (dam / "generated" / "RED-BAG.png").unlink()  # RED-BAG leaves the DAM
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["deleted"], report["store_views_removed"]) == (1, 1, 1)
    assert [v.payload["feedback"]["id"] for v in views(store)] == [kept["id"]]
    # The log keeps both photos: a labelled set, and the view comes back if the product does.
    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"]
    assert {(e["id"], e["view"]) for e in listed} == {(kept["id"], True), (doomed["id"], False)}
    again = json.loads(cli("indexer", "sync", dam, "--qdrant-path", store, "--json").stdout)
    assert again["store_views_removed"] == 0 and len(views(store)) == 1


def test_reindex_re_embeds_store_views_from_the_kept_photos(synced, cli, dam, store, tmp_path):
    photo = store_photo(tmp_path / "a.jpg", seed=7)
    add(cli, store, photo, "--product", CONFIRMED)
    [before] = [p for p in all_points(store, with_vectors=True) if p.payload.get("source") == "store"]
    result = cli("indexer", "sync", dam, "--qdrant-path", store, "--reindex", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["store_views_restored"] == 1
    [after] = [p for p in all_points(store, with_vectors=True) if p.payload.get("source") == "store"]
    assert after.id == before.id and after.payload["product_id"] == CONFIRMED
    for name, vector in before.vector.items():
        np.testing.assert_allclose(after.vector[name], vector, atol=1e-5)
    assert first(cli, store, photo)["source"] == "store"


def test_old_points_without_source_get_it_on_the_next_sync_without_encoding(synced, cli, dam, store, encode_calls):
    from conftest import open_store

    with open_store(store) as opened:
        catalogue = opened.collection("catalogue")
        ids = [pid for pid, _ in catalogue.scroll(("path",))]
        catalogue.set_payload(ids, {"source": None})  # as points written before `source` existed
    result = json.loads(cli("indexer", "sync", dam, "--qdrant-path", store, "--json").stdout)
    assert result["encoded"] == 0 and result["updated"] == len(ids)
    assert {p.payload.get("source") for p in all_points(store)} == {"catalogue"}


def test_a_box_sent_back_from_the_search_gives_the_searchs_own_view(synced, cli, store, tmp_path):
    """The page sends the box it was shown: the view then holds exactly the vectors that search used."""
    photo = store_photo(tmp_path / "shelf.jpg", seed=8)
    searched = json.loads(cli("search", "image", photo, "--qdrant-path", store, "--json").stdout)[0]
    box = ",".join(str(v) for v in searched["groups"][0]["box"])
    entry = json.loads(add(cli, store, photo, "--product", CONFIRMED, "--box", box).stdout)
    assert entry["box"] == searched["groups"][0]["box"]
    again = first(cli, store, photo)
    assert again["source"] == "store" and again["cosine"] == pytest.approx(1.0, abs=1e-5)


# -- the API: POST /v1/feedback, GET, DELETE ----------------------------------------------------


def post_feedback(client, photo: Path, key=None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(
        "/v1/feedback", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, params=params, headers=headers
    )


def test_confirm_list_and_undo_over_http(synced, serve, tmp_path):
    client = serve()
    photo = store_photo(tmp_path / "shelf.jpg", seed=20)
    searched = client.post("/v1/search", files={"image": ("shelf.jpg", photo.read_bytes(), "image/jpeg")}).json()
    shown = [m["product_id"] for m in searched["matches"]]
    box = ",".join(map(str, searched["groups"][0]["box"]))
    created = post_feedback(client, photo, product_id=CONFIRMED, box=box, answered=",".join(shown), by="till-3")
    assert created.status_code == 201, created.text
    entry = created.json()
    assert (entry["product_id"], entry["origin"], entry["by"], entry["answered"]) == (CONFIRMED, "api", "till-3", shown[:5])

    again = client.post("/v1/search", files={"image": ("shelf.jpg", photo.read_bytes(), "image/jpeg")}).json()
    assert (again["matches"][0]["product_id"], again["matches"][0]["source"]) == (CONFIRMED, "store")
    view_image = client.get(f"/v1/images/{again['matches'][0]['point_id']}")
    assert view_image.status_code == 200 and view_image.content == photo.read_bytes()
    catalogue_only = client.post(
        "/v1/search", files={"image": ("shelf.jpg", photo.read_bytes(), "image/jpeg")}, params={"store_views": "false"}
    ).json()
    assert catalogue_only["matches"][0]["source"] == "catalogue"
    product = client.get(f"/v1/products/{CONFIRMED}").json()
    assert [v["feedback"]["id"] for v in product["store_views"]] == [entry["id"]]
    assert all(not i["path"].startswith("photos/") for i in product["images"])
    info = client.get("/v1/info").json()
    assert (info["store_views"], info["feedback"]) == (1, 1)

    listed = client.get("/v1/feedback").json()
    assert listed["total"] == 1 and listed["entries"][0]["view"] is True
    assert client.delete(f"/v1/feedback/{entry['id']}").json()["id"] == entry["id"]
    assert client.get("/v1/feedback").json() == {"total": 0, "entries": []}
    after = client.post("/v1/search", files={"image": ("shelf.jpg", photo.read_bytes(), "image/jpeg")}).json()
    assert after["matches"][0]["source"] == "catalogue"
    assert "no feedback entry" in error_of(client.delete(f"/v1/feedback/{entry['id']}"), 404)


def test_not_in_catalogue_over_http_records_no_view(synced, serve, tmp_path):
    client = serve()
    created = post_feedback(client, store_photo(tmp_path / "shelf.jpg", seed=21), not_in_catalogue="true")
    assert created.status_code == 201 and created.json()["verdict"] == "not in catalogue" and created.json()["view"] is None


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"product_id": "NO-SUCH"}, 404, "no product"),
        ({}, 422, "say what the photo shows"),
        ({"product_id": CONFIRMED, "not_in_catalogue": "true"}, 422, "say what the photo shows"),
        ({"product_id": CONFIRMED, "box": "1,2,3"}, 422, "x0,y0,x1,y1"),
        ({"product_id": CONFIRMED, "box": "0,0,9999,9999"}, 422, "outside"),
    ],
    ids=["unknown-product", "no-answer", "both", "three-numbers", "box-outside"],
)
def test_bad_feedback_over_http_is_a_json_error(synced, serve, tmp_path, params, status, words):
    client = serve()
    assert words in error_of(post_feedback(client, store_photo(tmp_path / "s.jpg", seed=22), **params), status)
    assert client.get("/v1/feedback").json()["total"] == 0


def test_feedback_needs_the_feedback_key_when_one_is_set(synced, serve, tmp_path):
    client = serve(api_key="search-key", feedback_key="staff-key")
    photo = store_photo(tmp_path / "shelf.jpg", seed=23)
    assert "feedback key" in error_of(post_feedback(client, photo, key="search-key", product_id=CONFIRMED), 401)
    assert "feedback key" in error_of(client.get("/v1/feedback", headers={"Authorization": "Bearer search-key"}), 401)
    assert post_feedback(client, photo, key="staff-key", product_id=CONFIRMED).status_code == 201
    # The feedback key opens feedback only; searches still take the API key.
    assert error_of(client.get("/v1/info", headers={"Authorization": "Bearer staff-key"}), 401)


def test_feedback_falls_back_to_the_api_key(synced, serve, tmp_path):
    client = serve(api_key="search-key")
    photo = store_photo(tmp_path / "shelf.jpg", seed=24)
    assert error_of(post_feedback(client, photo, product_id=CONFIRMED), 401)
    assert post_feedback(client, photo, key="search-key", product_id=CONFIRMED).status_code == 201


def test_without_any_key_only_a_loopback_server_takes_feedback(synced, serve, tmp_path):
    client = serve(open_feedback=False)
    assert "CATALOGUE_FEEDBACK_KEY" in error_of(
        post_feedback(client, store_photo(tmp_path / "s.jpg", seed=25), product_id=CONFIRMED), 403
    )
    assert (
        client.post("/v1/search", files={"image": ("s.jpg", (tmp_path / "s.jpg").read_bytes(), "image/jpeg")}).status_code == 200
    )


def test_eval_on_feedback_leaves_each_photo_s_own_view_out(synced, cli, store, tmp_path):
    from indexer.store.schema import view_point_id

    # Two shots of one product in one store (the second re-saved, slightly darker), and one unknown product.
    first_shot = store_photo(tmp_path / "a.jpg", seed=30)
    second_shot = tmp_path / "b.jpg"
    Image.open(first_shot).point(lambda v: int(v * 0.95)).save(second_shot, quality=80)
    entries = [json.loads(add(cli, store, p, "--product", CONFIRMED).stdout) for p in (first_shot, second_shot)]
    add(cli, store, store_photo(tmp_path / "c.jpg", seed=31), "--not-in-catalogue")

    result = cli("search", "eval", "--feedback", "--qdrant-path", store, "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["queries"] == 2 and report["absent"] == 1
    shown = next(name for name in report["settings"] if name.startswith("colour"))
    assert report["settings"][shown]["top1"] == 1.0
    assert report["settings"][shown]["top1_through_store_view"] == 2  # each through the other's view
    own_views = {view_point_id(e["sha256"]) for e in entries}
    for query, entry in zip(report["per_query"], entries):
        top = query["top"][shown][0]
        assert top["source"] == "store" and top["point_id"] in own_views - {view_point_id(entry["sha256"])}
    human = cli("search", "eval", "--feedback", "--qdrant-path", store, "-q")
    assert "won through a store view" in human.stdout and "not in the catalogue" in human.stdout

    # Refit the confidence on the feedback: 2 photos as they are, 2 with their product hidden, 1 not in the catalogue.
    calibrated = json.loads(cli("search", "eval", "--feedback", "--calibrate", "--qdrant-path", store, "--json", "-q").stdout)
    assert calibrated["calibrated"]["samples"] == 5 and calibrated["calibrated"]["right"] == 2
    stored = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)["calibration"]
    assert set(stored["weights"]) == set(calibrated["calibrated"]["signals"]) == {"top", "margin"}  # too few photos to earn more
    assert stored["source"].startswith("3 confirmed photos in")


def test_eval_needs_feedback_or_a_labelled_folder(synced, cli, store, tmp_path):
    empty = cli("search", "eval", "--feedback", "--qdrant-path", store)
    assert empty.exit_code == 3 and "no feedback" in empty.stderr
    both = cli("search", "eval", "--feedback", "--queries", tmp_path, "--qdrant-path", store)
    assert both.exit_code == 2 and "--feedback" in both.stderr


def test_indexer_feedback_goes_through_the_serve_holding_the_store(synced, cli, store, tmp_path, monkeypatch):
    """The embedded store is one process at a time: with search serve on it, the CLI asks the server."""
    from conftest import serve_holding

    with serve_holding(store, CATALOGUE_FEEDBACK_KEY="staff") as port:
        photo = store_photo(tmp_path / "shelf.jpg", seed=40)
        refused = add(cli, store, photo, "--product", CONFIRMED)
        assert refused.exit_code == 4 and "CATALOGUE_FEEDBACK_KEY" in refused.stderr
        monkeypatch.setenv("CATALOGUE_FEEDBACK_KEY", "staff")
        added = add(cli, store, photo, "--product", CONFIRMED)
        assert added.exit_code == 0, added.output
        entry = json.loads(added.stdout)
        assert entry["origin"] == "cli" and entry["view"] and "through search serve" in added.stderr
        unknown = add(cli, store, photo, "--product", "NO-SUCH")
        assert unknown.exit_code == 3 and "no product" in unknown.stderr
        listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)
        assert [e["id"] for e in listed["entries"]] == [entry["id"]] and listed["entries"][0]["view"] is True
        # Numbers that are no pixels or ids, over real HTTP and through the hand-off: 422 / exit 2, one line.
        import httpx

        staff = {"Authorization": "Bearer staff"}
        for box in ("inf,0,10,10", "1e400,0,10,10"):
            refused = httpx.post(
                f"http://127.0.0.1:{port}/v1/feedback",
                params={"product_id": CONFIRMED, "box": box},
                content=photo.read_bytes(),
                headers={**staff, "Content-Type": "image/jpeg"},
                timeout=60,
            )
            assert "x0,y0,x1,y1" in error_of(refused, 422)
        assert "entry_id" in error_of(
            httpx.delete(f"http://127.0.0.1:{port}/v1/feedback/99999999999999999999", headers=staff), 422
        )
        huge = cli("indexer", "feedback", "remove", "99999999999999999999", "--qdrant-path", store)
        assert huge.exit_code == 2 and "Traceback" not in huge.output
        boxed = add(cli, store, photo, "--product", CONFIRMED, "--box", "inf,0,10,10")
        assert boxed.exit_code == 2 and len(boxed.stderr.strip().splitlines()) == 1
        removed = cli("indexer", "feedback", "remove", entry["id"], entry["id"] + 1, "--qdrant-path", store)
        assert removed.exit_code == 7 and f"Removed #{entry['id']}" in removed.stdout and f"#{entry['id'] + 1}" in removed.stderr
    assert views(store) == []


def test_answers_for_one_photo_arriving_together_leave_one_entry(tmp_path):
    """Two tills (or the server and the CLI) answering for the same photo at once: one entry, no error."""
    from concurrent.futures import ThreadPoolExecutor

    from indexer.feedback import FeedbackLog

    log = FeedbackLog(tmp_path / "feedback")
    photo = store_photo(tmp_path / "shelf.jpg", seed=50).read_bytes()

    def answer(n: int):
        return log.add(photo, product_id=f"P{n}", answered=["P0"], box=None, origin="api")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(answer, range(16)))
    [entry] = log.entries()
    replaced = {before.id for _, before in results if before is not None}
    [survivor] = [added for added, _ in results if added.id not in replaced]  # the one answer nobody replaced
    assert (entry.id, entry.product_id) == (survivor.id, survivor.product_id)
    assert sum(replaced is not None for _, replaced in results) == 15  # each later answer replaced the one before


def test_eval_on_a_folder_leaves_out_views_of_its_own_photos(synced, cli, store, tmp_path):
    """Photos staff confirmed and later evaluated as a folder must not win through their own view."""
    folder = tmp_path / "labelled"
    photo = store_photo(folder / "shelf.jpg", seed=60)
    (folder / "truth.csv").write_text(f"query,reference\nshelf.jpg,{CONFIRMED}\n")
    before = json.loads(
        cli(
            "search", "eval", "--queries", folder, "--ground-truth", folder / "truth.csv", "--qdrant-path", store, "--json", "-q"
        ).stdout
    )
    add(cli, store, photo, "--product", CONFIRMED)
    after = json.loads(
        cli(
            "search", "eval", "--queries", folder, "--ground-truth", folder / "truth.csv", "--qdrant-path", store, "--json", "-q"
        ).stdout
    )
    assert after["per_query"][0]["ranks"] == before["per_query"][0]["ranks"]
    assert first(cli, store, photo)["source"] == "store"  # while a search of it does find its view
