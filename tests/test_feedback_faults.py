"""A confirmation is recorded whole or not at all (issue 17, items 4, 7 and 9's origin).

Faults are injected at each step of an answer (the photo, the view, the cap,
the log's commit) with the real embedded store and real photos: the seams
stand for the full disk that cannot be made here. Afterwards the log, the
photos and the views must say the same thing, and the command or the HTTP
answer must say that nothing was recorded. `restore` repairs disagreements
left by older versions, and what a crash leaves in photos/ goes on the next
open. Numbers that cannot be pixels or entry ids are refused in one line.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import all_points, error_of, open_store
from test_feedback import CONFIRMED, add, post_feedback, store_photo

from indexer.errors import StoreUnavailable
from indexer.feedback import FeedbackLog
from indexer.store import Point
from indexer.store.edge import EdgeCatalogue
from indexer.store.schema import view_point_id

OTHER = "RED-BAG"  # another catalogue product of tests/data/dam
VIEW_FIELDS = ("product_id", "path", "category", "source", "colour", "feedback")  # a store view's payload (README)


@dataclass
class State:
    """What a user can see of the feedback store: its log, its photos and the store views."""

    entries: list[tuple]  # (id, product, sha256, photo), newest first
    photos: list[str]
    views: dict[str, tuple]  # point id: (product, feedback id)
    vectors: dict[str, dict]

    def assert_agrees(self) -> None:
        """Every photo has its entry and every entry its photo; every view is of an entry naming its product."""
        assert self.photos == sorted(photo for *_, photo in self.entries)
        by_view = {view_point_id(sha): (entry_id, product) for entry_id, product, sha, _ in self.entries}
        for pid, (product, entry_id) in self.views.items():
            assert by_view.get(pid) == (entry_id, product), f"view {pid} of {product} disagrees with the log"

    def assert_same(self, other: State) -> None:
        assert (self.entries, self.photos, self.views) == (other.entries, other.photos, other.views)
        for pid, vectors in self.vectors.items():
            for name, vector in vectors.items():
                np.testing.assert_allclose(other.vectors[pid][name], vector, atol=1e-6)


def state(folder: Path, store: str) -> State:
    """Read without opening the feedback store through StoreViews (which would clean photos/ first)."""
    photos = sorted(p.name for p in (folder / "photos").iterdir() if not p.name.startswith("."))
    leftovers = [p.name for p in (folder / "photos").iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"left in photos/: {leftovers}"
    entries = [(e.id, e.product_id, e.sha256, e.photo) for e in FeedbackLog(folder).entries()]
    points = [p for p in all_points(store, with_vectors=True) if p.payload.get("source") == "store"]
    views = {p.id: (p.payload["product_id"], p.payload["feedback"]["id"]) for p in points}
    return State(entries, photos, views, {p.id: p.vector for p in points})


def folder_of(store: str) -> Path:
    return Path(store) / "feedback" / "catalogue"


def fail_once(monkeypatch, cls, method: str, error: Exception | None = None, *, static: bool = False, when=None) -> list:
    """The next call of `cls.method` (for which `when(*args)` holds) fails as a full disk would, later ones
    work; the calls that failed."""
    original = getattr(cls, method, None)
    failed: list = []

    def failing(*args, **kwargs):
        if not failed and (when is None or when(*args)):
            failed.append(args)
            raise error or StoreUnavailable("the embedded store is nearly out of disk space (a test stands for a full disk)")
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, method, staticmethod(failing) if static else failing, raising=False)
    return failed


def disk_full_on_photo(monkeypatch) -> list:
    """Writing a photo fills the disk half way through, as ENOSPC does."""
    original = Path.write_bytes
    failed: list = []

    def write_bytes(self, data):
        if self.name.endswith(".partial") and not failed:
            failed.append(self)
            with open(self, "wb") as half:
                half.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return failed


def commit_fails(monkeypatch) -> list:
    """The log's next commit of a change fails, as SQLite's does on a full disk."""
    full = sqlite3.OperationalError("database or disk is full")
    return fail_once(monkeypatch, FeedbackLog, "_commit", full, static=True, when=lambda db: db.total_changes > 0)


@pytest.fixture
def confirmed(synced, cli, store, tmp_path) -> dict:
    """One photo already confirmed as CONFIRMED: it has its view."""
    result = add(cli, store, store_photo(tmp_path / "first.jpg", seed=70), "--product", CONFIRMED)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# Each case: the answer given, what fails, and the environment (the cap). Every one must leave everything as it was.
FAULTS = {
    "new-photo:photo-write": (("new", "--product", CONFIRMED), disk_full_on_photo, {}),
    "new-photo:view-upsert": (("new", "--product", CONFIRMED), lambda mp: fail_once(mp, EdgeCatalogue, "upsert"), {}),
    "new-photo:cap-eviction": (
        ("new", "--product", CONFIRMED),
        lambda mp: fail_once(mp, EdgeCatalogue, "delete"),
        {"CATALOGUE_MAX_STORE_VIEWS": "1"},
    ),
    "new-photo:log-commit": (("new", "--product", CONFIRMED), commit_fails, {"CATALOGUE_MAX_STORE_VIEWS": "1"}),
    "correction:view-upsert": (("first", "--product", OTHER), lambda mp: fail_once(mp, EdgeCatalogue, "upsert"), {}),
    "correction:log-commit": (("first", "--product", OTHER), commit_fails, {}),
    "not-in-catalogue:view-delete": (("first", "--not-in-catalogue"), lambda mp: fail_once(mp, EdgeCatalogue, "delete"), {}),
    "not-in-catalogue:log-commit": (("first", "--not-in-catalogue"), commit_fails, {}),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_an_answer_that_fails_at_any_step_records_nothing(confirmed, cli, store, tmp_path, monkeypatch, case):
    (which, *answer), inject, env = FAULTS[case]
    photo = tmp_path / "first.jpg" if which == "first" else store_photo(tmp_path / "second.jpg", seed=71)
    before = state(folder_of(store), store)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    failed = inject(monkeypatch)

    result = add(cli, store, photo, *answer)
    assert failed, "the fault was not reached"
    after = state(folder_of(store), store)
    after.assert_agrees()
    before.assert_same(after)
    assert result.exit_code == 4, result.output
    assert "nothing was recorded" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1

    # "Run the same command again": once the fault has passed, the answer is recorded whole.
    again = add(cli, store, photo, *answer)
    assert again.exit_code == 0, again.output
    state(folder_of(store), store).assert_agrees()


def test_a_removal_that_fails_removes_nothing(confirmed, cli, store, monkeypatch):
    before = state(folder_of(store), store)
    for inject in (lambda: fail_once(monkeypatch, EdgeCatalogue, "delete"), lambda: commit_fails(monkeypatch)):
        failed = inject()
        result = cli("indexer", "feedback", "remove", confirmed["id"], "--qdrant-path", store)
        assert failed and result.exit_code == 4 and "nothing was removed" in result.stderr, result.output
        before.assert_same(state(folder_of(store), store))
    removed = cli("indexer", "feedback", "remove", confirmed["id"], "--qdrant-path", store)
    assert removed.exit_code == 0, removed.output
    after = state(folder_of(store), store)
    after.assert_agrees()
    assert (after.entries, after.photos, after.views) == ([], [], {})


def test_when_the_views_cannot_be_put_back_the_error_says_so_and_restore_repairs(confirmed, cli, store, tmp_path, monkeypatch):
    """A commit that fails, then a store that refuses the undo as well: nothing in the log, and the error names the repair."""
    commit_fails(monkeypatch)
    original = EdgeCatalogue.upsert
    calls = []

    def upsert_then_refuse(self, points):
        calls.append(points)
        if len(calls) > 1:
            raise StoreUnavailable("the embedded store is nearly out of disk space")
        return original(self, points)

    monkeypatch.setattr(EdgeCatalogue, "upsert", upsert_then_refuse)
    result = add(cli, store, tmp_path / "first.jpg", "--product", OTHER)
    assert result.exit_code == 4 and "could not be put back" in result.stderr and "indexer feedback restore" in result.stderr
    monkeypatch.setattr(EdgeCatalogue, "upsert", original)
    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"]
    assert [(e["product_id"], e["view"]) for e in listed] == [(CONFIRMED, False)]  # the list does not pretend

    restored = cli("indexer", "feedback", "restore", "--qdrant-path", store, "--json", "-q")
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["views_product_differs"] == 1
    after = state(folder_of(store), store)
    after.assert_agrees()
    assert list(after.views.values()) == [(CONFIRMED, confirmed["id"])]


# -- over HTTP: 201 means recorded, an error means nothing changed -------------------------------


def test_http_answers_refused_with_503_change_nothing(confirmed, serve, store, tmp_path, monkeypatch):
    """The issue's case: with the disk near full, a correction and "not in catalogue" got 503 yet were logged."""
    client = serve()
    catalogue = client.service.views.catalogue
    photo = tmp_path / "first.jpg"

    def seen() -> tuple:
        views = {pid: payload["product_id"] for pid, payload in catalogue.store_views()}
        return client.get("/v1/feedback").json(), views

    before = seen()
    fail_once(monkeypatch, EdgeCatalogue, "upsert")
    assert "nothing was recorded" in error_of(post_feedback(client, photo, product_id=OTHER), 503)
    assert seen() == before
    commit_fails(monkeypatch)
    assert "nothing was recorded" in error_of(post_feedback(client, photo, not_in_catalogue="true"), 503)
    assert seen() == before
    listed, views = before
    assert [(e["product_id"], e["view"]) for e in listed["entries"]] == [(CONFIRMED, True)] and len(views) == 1

    created = post_feedback(client, photo, not_in_catalogue="true")
    assert created.status_code == 201 and created.json()["view"] is None
    listed, views = seen()
    assert [(e["verdict"], e["view"]) for e in listed["entries"]] == [("not in catalogue", False)] and views == {}


# -- restore repairs every disagreement --------------------------------------------------------


def test_restore_repairs_every_kind_of_disagreement(synced, cli, store, tmp_path, monkeypatch):
    def confirm(seed: int, *answer: str) -> dict:
        result = add(cli, store, store_photo(tmp_path / f"p{seed}.jpg", seed=seed), *answer)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    oldest = confirm(80, "--product", CONFIRMED)  # over the cap of 2 at restore: its view goes
    moved = confirm(81, "--product", CONFIRMED)  # its view will say another product
    lost = confirm(82, "--product", CONFIRMED)  # its view will be missing
    absent = confirm(83, "--not-in-catalogue")  # a view will appear for it
    with open_store(store) as opened:  # what older versions and failed answers left behind
        catalogue = opened.collection("catalogue")
        template = catalogue.vectors([oldest["view"]], [m.vector for m in catalogue.models()])[oldest["view"]]
        payload = catalogue.retrieve([oldest["view"]], VIEW_FIELDS)[oldest["view"]]

        stray = str(uuid.uuid4())
        catalogue.upsert(
            [
                Point(view_point_id(absent["sha256"]), template, {**payload, "feedback": {"id": absent["id"]}}),
                Point(stray, template, {**payload, "feedback": {"id": 999}}),
            ]
        )
        catalogue.set_payload([moved["view"]], {"product_id": OTHER})
        catalogue.delete([lost["view"]])

    listed = json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["entries"]
    assert [e["view"] for e in listed] == [False, False, False, True]  # absent, lost, moved: no; only oldest's is right

    monkeypatch.setenv("CATALOGUE_MAX_STORE_VIEWS", "2")
    result = cli("indexer", "feedback", "restore", "--qdrant-path", store, "--json", "-q")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert {k: v for k, v in done.items() if v} == {
        "restored": 2,
        "over_cap": 1,
        "views_missing": 1,
        "views_product_differs": 1,
        "views_not_in_catalogue": 1,
        "views_without_entry": 1,
        "views_left_out": 1,
    }
    after = state(folder_of(store), store)
    after.assert_agrees()
    assert after.views == {lost["view"]: (CONFIRMED, lost["id"]), moved["view"]: (CONFIRMED, moved["id"])}
    human = cli("indexer", "feedback", "restore", "--qdrant-path", store, "-q")
    assert "Restored 2" in human.stdout and "agreed with the log" in human.stdout


def test_restore_of_some_products_leaves_the_others_alone(synced, cli, store, tmp_path, tiny_clip):
    """sync restores the views of products that came back to the DAM: only theirs are touched."""
    mine = json.loads(add(cli, store, store_photo(tmp_path / "a.jpg", seed=90), "--product", CONFIRMED).stdout)
    theirs = json.loads(add(cli, store, store_photo(tmp_path / "b.jpg", seed=91), "--product", OTHER).stdout)
    with open_store(store) as opened:
        opened.collection("catalogue").delete([mine["view"], theirs["view"]])
    from search.query import Searcher
    from search.views import StoreViews

    with open_store(store) as opened:
        catalogue = opened.collection("catalogue")
        done = StoreViews(catalogue, searcher=Searcher(catalogue, device="cpu")).restore(products={OTHER})
    assert (done["restored"], done["views_missing"]) == (1, 1)
    assert set(state(folder_of(store), store).views) == {theirs["view"]}


# -- what a crash leaves in photos/ goes on the next open ------------------------------------------


def crash_leftovers(store: str, tmp_path: Path, kept: dict) -> Path:
    """A half photo, a photo whose row never committed, and a kept photo set aside by a removal that did not commit."""
    photos = folder_of(store) / "photos"
    (photos / f".{'0' * 64}.jpg.{uuid.uuid4().hex}.partial").write_bytes(b"\xff\xd8half a photo")
    orphan = store_photo(tmp_path / "orphan.jpg", seed=99).read_bytes()
    (photos / f"{'f' * 64}.jpg").write_bytes(orphan)
    name = Path(kept["photo"]).name
    (photos / name).rename(photos / f".{name}.removing")
    return photos


def test_a_crash_s_leftovers_are_cleaned_when_the_cli_opens_the_store(confirmed, cli, store, tmp_path, caplog):
    photos = crash_leftovers(store, tmp_path, confirmed)
    listed = cli("indexer", "feedback", "list", "--qdrant-path", store, "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(p.name for p in photos.iterdir()) == [Path(confirmed["photo"]).name]
    state(folder_of(store), store).assert_agrees()
    [line] = [r.getMessage() for r in caplog.records if r.name == "catalogue.feedback"]
    assert "removed 1 unfinished file(s) and 1 photo(s) without a log entry" in line and "put back 1" in line


def test_a_crash_s_leftovers_are_cleaned_when_serve_starts(confirmed, serve, store, tmp_path, caplog):
    photos = crash_leftovers(store, tmp_path, confirmed)
    client = serve()
    assert sorted(p.name for p in photos.iterdir()) == [Path(confirmed["photo"]).name]
    image = client.get(f"/v1/images/{confirmed['view']}")
    assert image.status_code == 200 and image.content == (tmp_path / "first.jpg").read_bytes()
    assert any("without a log entry" in r.getMessage() for r in caplog.records if r.name == "catalogue.feedback")


# -- numbers that cannot be pixels or ids ------------------------------------------------------------

BAD_BOXES = [
    "inf,0,10,10",
    "1e400,0,10,10",
    "0,0,1e400,10",
    "nan,0,10,10",
    "-1,0,10,10",
    "10,10,5,5",
    "0,0,99999999999999999999999,10",
    "1.5.2,0,10,10",
    "a,b,c,d",
    "1,2,3",
    "1,2,3,4,5",
    ",,,",
]


@pytest.mark.parametrize("box", BAD_BOXES)
def test_a_box_that_is_not_pixels_is_exit_2_in_one_line(synced, cli, store, tmp_path, box):
    result = add(cli, store, store_photo(tmp_path / "s.jpg", seed=4), "--product", CONFIRMED, "--box", box)
    assert result.exit_code == 2 and "x0,y0,x1,y1" in result.stderr, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert FeedbackLog(folder_of(store)).entries() == []


def test_bad_numbers_of_the_feedback_api_are_422(synced, serve, tmp_path):
    client = serve()
    photo = store_photo(tmp_path / "s.jpg", seed=4)
    for box in BAD_BOXES:
        assert "x0,y0,x1,y1" in error_of(post_feedback(client, photo, product_id=CONFIRMED, box=box), 422)
    for entry_id in ("99999999999999999999", "0", "-1", "abc", "1e3", "1.5", "inf"):
        assert "entry_id" in error_of(client.delete(f"/v1/feedback/{entry_id}"), 422)
    for limit in ("0", "99999999999999999999", "inf", "nan", "-5", "1e400", "true"):
        assert "limit" in error_of(client.get("/v1/feedback", params={"limit": limit}), 422)
    assert "origin" in error_of(post_feedback(client, photo, product_id=CONFIRMED, origin="admin"), 422)
    assert client.get("/v1/feedback").json()["total"] == 0
    # Decimals are pixels too, rounded; the client says where the answer comes from.
    created = post_feedback(client, photo, product_id=CONFIRMED, box="10.4,10,50.6,50", origin="cli")
    assert created.status_code == 201, created.text
    assert (created.json()["box"], created.json()["origin"]) == ([10, 10, 51, 50], "cli")


@pytest.mark.parametrize("args", [("99999999999999999999",), ("0",), ("abc",), ("1", "-1"), ("1e3",)])
def test_bad_entry_ids_of_the_cli_are_exit_2_in_one_line(confirmed, cli, store, args):
    result = cli("indexer", "feedback", "remove", *args, "--qdrant-path", store)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert json.loads(cli("indexer", "feedback", "list", "--qdrant-path", store, "--json").stdout)["total"] == 1


@pytest.mark.parametrize("limit", ["0", "99999999999999999999999", "inf", "-1"])
def test_bad_list_limits_of_the_cli_are_exit_2_or_harmless(confirmed, cli, store, limit):
    result = cli("indexer", "feedback", "list", "--limit", limit, "--qdrant-path", store)
    assert "Traceback" not in result.output
    assert result.exit_code == (0 if limit.isdigit() and int(limit) > 0 else 2), result.output
