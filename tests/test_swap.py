"""A model swap with no gap: a new collection built beside the live one, compared, made live in one step,
followed by a running `search serve` without a failed request, switched back, and dropped only when asked."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from conftest import all_points, eventually, serve_holding

RED = Path("generated") / "RED-BAG.png"
PNG = {"Content-Type": "image/png"}


def info(cli, store) -> dict:
    result = cli("indexer", "info", "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def build_beside(cli, dam, store, model, name="v2") -> dict:
    result = cli("indexer", "sync", dam, "--into", name, "--model", model, "--qdrant-path", store, "--json", "-q")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def confirm(cli, store, photo: Path) -> None:
    result = cli("indexer", "feedback", "add", photo, "--product", "RED-BAG", "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output


def released(store: str, name: str) -> bool:
    """Whether no process (this one included) holds collection `name` now."""
    from indexer.errors import StoreInUse
    from indexer.store.lock import CollectionLock

    try:
        CollectionLock(Path(store), name).release()
    except StoreInUse:
        return False
    return True


def test_new_model_built_beside_the_live_one_gets_its_store_views_and_switches_both_ways(
    synced, cli, dam, store, other_clip, tmp_path
):
    photo = tmp_path / "shelf.png"
    photo.write_bytes((dam / RED).read_bytes())
    confirm(cli, store, photo)

    report = build_beside(cli, dam, store, other_clip)
    assert report["collection"] == "v2" and report["added"] == synced["added"]
    assert report["store_views_restored"] == 1  # re-embedded from the live name's feedback store
    views = [p for p in all_points(store, "v2", with_vectors=True) if p.payload.get("source") == "store"]
    assert len(views) == 1 and views[0].payload["product_id"] == "RED-BAG"
    assert [len(v) for v in views[0].vector.values()] == [24]  # the other model's dimension
    before = info(cli, store)
    assert before["live"] == "catalogue" and before["models"][0]["dim"] == 16
    roles = {c["name"]: c["role"] for c in before["collections"]}
    assert roles["catalogue"] == "live as 'catalogue'" and roles["v2"].startswith("built for 'catalogue'")

    switched = cli("indexer", "live", "v2", "--qdrant-path", store, "--json")
    assert switched.exit_code == 0, switched.output
    assert json.loads(switched.stdout) == {"collection": "catalogue", "live": "v2", "previous": "catalogue", "changed": True}
    after = info(cli, store)
    assert after["live"] == "v2" and after["models"][0]["dim"] == 24
    assert after["store_views"] == 1 and after["feedback"]["entries"] == 1  # one feedback store for both
    searched = cli("search", "image", dam / RED, "--qdrant-path", store, "--json")
    assert searched.exit_code == 0, searched.output

    back = cli("indexer", "live", "--back", "--qdrant-path", store, "--json")
    assert back.exit_code == 0 and json.loads(back.stdout)["live"] == "catalogue"
    assert info(cli, store)["models"][0]["dim"] == 16
    assert {c["name"]: c["role"] for c in info(cli, store)["collections"]}["v2"].startswith("previous of 'catalogue'")


def test_old_collections_are_dropped_only_when_asked_and_never_the_live_one(synced, cli, dam, store, other_clip):
    build_beside(cli, dam, store, other_clip)
    refused = cli("indexer", "drop", "catalogue", "--qdrant-path", store)
    assert refused.exit_code == 2 and "'catalogue' is live" in refused.stderr
    assert cli("indexer", "live", "v2", "--qdrant-path", store).exit_code == 0
    assert cli("indexer", "drop", "v2", "--qdrant-path", store).exit_code == 2
    dropped = cli("indexer", "drop", "catalogue", "--qdrant-path", store)
    assert dropped.exit_code == 0, dropped.output
    assert [c["name"] for c in info(cli, store)["collections"]] == ["v2"]
    no_way_back = cli("indexer", "live", "--back", "--qdrant-path", store)
    assert no_way_back.exit_code == 2 and "no earlier collection" in no_way_back.stderr
    assert cli("indexer", "drop", "nothing", "--qdrant-path", store).exit_code == 3


def test_a_switch_to_a_missing_or_unfinished_collection_or_into_the_live_name_is_refused(synced, cli, dam, store, other_clip):
    assert cli("indexer", "live", "nope", "--qdrant-path", store).exit_code == 3
    into_live = cli("indexer", "sync", dam, "--into", "catalogue", "--qdrant-path", store)
    assert into_live.exit_code == 2 and "not the live name" in into_live.stderr
    build_beside(cli, dam, store, other_clip)
    record = Path(store, "collections", "v2", "collection.json")
    finished = json.loads(record.read_text())
    record.write_text(json.dumps({**finished, "built": None}))  # what a build killed half-way leaves
    unfinished = cli("indexer", "live", "v2", "--qdrant-path", store)
    assert unfinished.exit_code == 2 and "has not finished" in unfinished.stderr
    record.write_text(json.dumps(finished))
    assert cli("indexer", "live", "v2", "--qdrant-path", store).exit_code == 0
    assert cli("indexer", "live", "v2", "--qdrant-path", store).stdout.startswith("'v2' is already live")


def test_eval_on_the_new_collection_uses_the_same_confirmed_photos(synced, cli, dam, store, other_clip, tmp_path):
    photo = tmp_path / "shelf.png"
    photo.write_bytes((dam / RED).read_bytes())
    confirm(cli, store, photo)
    build_beside(cli, dam, store, other_clip)
    for collection in ("catalogue", "v2"):
        result = cli("search", "eval", "--feedback", "--collection", collection, "--qdrant-path", store, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["queries"] == 1


def test_eval_compares_the_new_collection_with_the_live_one_side_by_side(synced, cli, dam, store, other_clip, tmp_path):
    photo = tmp_path / "shelf.png"
    photo.write_bytes((dam / RED).read_bytes())
    confirm(cli, store, photo)
    build_beside(cli, dam, store, other_clip)
    same = ("search", "eval", "--feedback", "--compare-with", "v2", "--qdrant-path", store, "-q")
    result = cli(*same, "--json")
    assert result.exit_code == 0, result.output
    both = json.loads(result.stdout)
    assert (both["collection"], both["compared"]["collection"]) == ("catalogue", "v2")
    assert both["models"] != both["compared"]["models"] and both["queries"] == both["compared"]["queries"] == 1
    shown = cli(*same)
    assert shown.exit_code == 0 and "Side by side" in shown.stdout
    assert all(name in shown.stdout.split("Side by side")[1] for name in ("catalogue (", "v2 (", "top-1", "MRR"))
    refused = cli(*same, "--calibrate")
    assert refused.exit_code == 2 and "--compare-with" in refused.stderr


@pytest.mark.slow
def test_build_runs_while_search_serve_holds_the_live_collection(synced, cli, dam, store, other_clip):
    with serve_holding(store) as port:
        build_beside(cli, dam, store, other_clip)  # another process than the server: the lock is per collection
        assert cli("indexer", "live", "v2", "--qdrant-path", store).exit_code == 0

        def answering_from() -> str:
            return httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=30).json()["live"]

        eventually(lambda: answering_from() == "v2", timeout=60, awaited="search serve to follow the switch")


def test_serve_follows_the_switch_and_back_without_a_failed_request(synced, serve, cli, dam, store, other_clip):
    build_beside(cli, dam, store, other_clip)
    client = serve(workers=2, queue=16)
    photo = (dam / RED).read_bytes()
    statuses: list[int] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            response = client.post("/v1/search", content=photo, headers=PNG)
            statuses.append(response.status_code)

    def dim() -> int:
        return client.get("/v1/info").json()["models"][0]["dim"]

    searchers = [threading.Thread(target=search) for _ in range(2)]
    for thread in searchers:
        thread.start()
    try:
        eventually(lambda: len(statuses) >= 3, awaited="searches on the old collection")
        confirmed = client.post("/v1/feedback", params={"product_id": "RED-BAG"}, content=photo, headers=PNG)
        assert confirmed.status_code == 201, confirmed.text  # after v2's views were made: caught up at the switch
        assert cli("indexer", "live", "v2", "--qdrant-path", store).exit_code == 0
        eventually(lambda: dim() == 24, timeout=60, awaited="the service to answer from the new model")
        assert client.get("/v1/info").json()["store_views"] == 1
        eventually(lambda: released(store, "catalogue"), awaited="the old collection released once its searches ended")
        answered = len(statuses)
        eventually(lambda: len(statuses) >= answered + 3, awaited="searches on the new collection")
        assert cli("indexer", "live", "--back", "--qdrant-path", store).exit_code == 0
        eventually(lambda: dim() == 16, timeout=60, awaited="the service to answer from the old model again")
        answered = len(statuses)
        eventually(lambda: len(statuses) >= answered + 3, awaited="searches after the switch back")
    finally:
        stop.set()
        for thread in searchers:
            thread.join(60)
    assert set(statuses) == {200} and len(statuses) >= 9, [s for s in statuses if s != 200]
    assert client.get("/v1/info").json()["live"] == "catalogue"


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_on_a_qdrant_server_the_switch_is_a_collection_alias(tmp_path):
    """The same rules over the server's own aliases (qdrant-client's local mode stands in for the server)."""
    from qdrant_client import QdrantClient

    from indexer.errors import StoreUnavailable
    from indexer.store import live
    from indexer.store.schema import ModelSpec
    from indexer.store.server import ServerStore

    server = ServerStore.__new__(ServerStore)
    server.client, server.location, server._url = QdrantClient(":memory:"), "memory", ":memory:"
    for name in ("v1", "v2"):
        collection = server.collection(name)
        collection.create([ModelSpec("m", 4)], root="/dam")
        collection.update_metadata(serves="catalogue", built=1)
    assert live.make_live(server, "catalogue", "v1").previous is None
    assert live.make_live(server, "catalogue", "v2").previous == "v1"
    assert server.client.get_aliases().aliases[0].collection_name == "v2"  # what other services querying the name see
    assert server.collection("catalogue").name == "v2" and server.feedback_name("v2") == "catalogue"
    assert live.switch_back(server, "catalogue").live == "v1"
    with pytest.raises(StoreUnavailable, match="cannot give an alias the name of a collection"):
        live.make_live(server, "v2", "v1")
    live.drop(server, "catalogue", "v2")
    assert server.names() == ["v1"]
