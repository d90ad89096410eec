"""`search serve` refits the confidence on the store's answers, in the background, and adopts the fit
only when its leave-one-photo-out AUC beats the calibration in force on the same answers.

A real app over a real store with the tiny CLIP; the answers go through /v1/feedback. The photos are
catalogue images of vivid, distinct colours, re-saved: each confirmed as its product is a right top-1 whose
colour matches (the highest scores), and with its product hidden a not-in-catalogue answer whose colour
does not (lower scores). Which case is better is set by the calibration in force: one that ranks the
answers backwards (a refit beats it), or one that separates them by score (nothing can beat it).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import eventually, open_store, studio_shot
from PIL import Image

VIVID = [(230, 200, 20), (200, 30, 180), (30, 190, 200), (240, 130, 20), (110, 40, 160), (140, 220, 40), (250, 150, 170)]

# Ranks a high score as unlikely to be right: any fit on real answers separates them better.
BACKWARDS = {"weights": {"top": -10.0}, "bias": 5.0, "source": "backwards", "samples": 2, "kind": "search-eval"}
# Separates the tests' right answers (a copy of a catalogue image: its score leads) from the hidden ones.
BY_SCORE = {"weights": {"top": 40.0}, "bias": -38.0, "source": "by score", "samples": 2, "kind": "search-eval"}


def calibrated(store: str, calibration: dict | None) -> None:
    with open_store(store) as opened:
        opened.collection("catalogue").update_metadata(calibration=calibration)


def resaved(path, darker: float = 0.97) -> bytes:
    """A catalogue image as a store photo of it: other bytes, nearly the same pixels."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").point(lambda v: int(v * darker)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def noise() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def confirm(client, photo: bytes) -> dict:
    """Search the photo, then confirm its first answer (a right top-1 by construction), as the page does."""
    answer = client.post("/v1/search", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    product = answer["matches"][0]["product_id"]
    saved = client.post(
        "/v1/feedback",
        content=photo,
        headers={"Content-Type": "image/jpeg"},
        params={"product_id": product, "answered": product},
    )
    assert saved.status_code == 201, saved.text
    return saved.json()


def fits(client) -> list[dict]:
    return client.get("/v1/info").json()["calibration_fits"]


@pytest.fixture
def vivid(cli, dam, store, tiny_clip) -> list[bytes]:
    """The DAM with seven products of vivid, distinct colours, synced; their store photos."""
    shots = [studio_shot(dam / "vivid" / f"VIVID-{n}.png", colour, size=160) for n, colour in enumerate(VIVID)]
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output
    return [resaved(shot) for shot in shots]


def test_a_refit_that_separates_the_answers_better_is_adopted(vivid, serve, store, cli):
    calibrated(store, BACKWARDS)
    client = serve(refit_after=4, refit_every=4, refit_quiet=2.0)
    photos = vivid
    missing = client.post(
        "/v1/feedback", content=noise(), headers={"Content-Type": "image/png"}, params={"not_in_catalogue": "true"}
    )
    assert missing.status_code == 201
    for photo in photos[:3]:
        confirm(client, photo)
    assert not client.service.refitter.due()  # 3 answers name a product: "not in the catalogue" does not count
    assert fits(client) == []

    for photo in photos[3:6]:  # a burst: one fit once the answers pause, not one per answer
        confirm(client, photo)
    eventually(lambda: fits(client), timeout=120, awaited="a refit")
    [fitted] = fits(client)
    assert fitted["answers"] == 7 and fitted["labelled"] == 6 and fitted["samples"] == 13  # 6 x 2 + the unknown one
    assert fitted["in_force"] == "search-eval" and fitted["auc"] > fitted["auc_in_force"] and fitted["adopted"]
    info = client.get("/v1/info").json()
    assert info["calibration"]["kind"] == "refit" and info["calibration"]["figures"]["auc"] == fitted["auc"]
    assert info["calibration"]["weights"] != BACKWARDS["weights"]
    answer = client.post("/v1/search", content=photos[0], headers={"Content-Type": "image/jpeg"}).json()
    assert answer["calibrated_for_store"] is True

    client.__exit__(None, None, None)  # the embedded store is one process at a time: free it for the CLI
    shown = cli("indexer", "info", "--qdrant-path", store)
    assert "fitted on the store's answers" in shown.stdout and "refits      1;" in shown.stdout and "adopted" in shown.stdout
    record = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)
    assert record["calibration"]["kind"] == "refit" and record["calibration_fits"] == [fitted]


def test_a_refit_that_does_not_separate_better_is_kept_in_the_history_only(vivid, serve, store):
    calibrated(store, BY_SCORE)
    client = serve(refit_after=4, refit_every=2, refit_quiet=0.0)
    photos = vivid
    for photo in photos[:4]:
        confirm(client, photo)
    eventually(lambda: fits(client), timeout=120, awaited="a refit")
    first = fits(client)[0]
    assert first["auc_in_force"] == 1.0 and first["auc"] <= first["auc_in_force"] and not first["adopted"]
    info = client.get("/v1/info").json()
    assert info["calibration"]["kind"] == "search-eval" and info["calibration"]["weights"] == BY_SCORE["weights"]

    for photo in photos[4:6]:  # `every` more answers: fitted again, judged again against the same calibration
        confirm(client, photo)
    eventually(lambda: len(fits(client)) == 2, timeout=120, awaited="a second refit")
    second = fits(client)[1]
    assert second["labelled"] == 6 and not second["adopted"]
    assert client.get("/v1/info").json()["calibration"]["weights"] == BY_SCORE["weights"]


def test_until_the_store_has_its_own_calibration_searches_say_so(vivid, serve):
    client = serve(refit_after=0)  # never refits
    photo = vivid[0]
    answer = client.post("/v1/search", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    assert answer["calibrated_for_store"] is False and "confident" in answer and "confidence" in answer
    assert client.get("/v1/info").json()["calibration"]["kind"] == "built-in"
    confirm(client, photo)
    assert client.service.refitter.thread is None and fits(client) == []


@pytest.mark.parametrize("kind", ["built-in", "search-eval", "refit"])
def test_a_calibration_keeps_its_kind_and_figures_in_the_record(kind):
    from search.confidence import Calibration

    stored = {**BY_SCORE, "kind": kind, "figures": {"auc": 0.8}}
    assert Calibration.from_metadata(stored).to_metadata() == stored
    older = {k: v for k, v in BY_SCORE.items() if k != "kind"}  # fitted before kinds existed: by search eval
    assert Calibration.from_metadata(older).kind == "search-eval" and Calibration.from_metadata(None).kind == "built-in"
