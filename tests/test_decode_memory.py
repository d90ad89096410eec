"""Decoding in bounded memory: a huge picture comes out at the size the pipeline needs, one that
cannot fit the decode budget is refused in one line, and normal photos decode exactly as before."""

from __future__ import annotations

import io
import json
import multiprocessing
import re
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DATA, all_points, error_of, serve_holding
from PIL import Image, ImageDraw, ImageOps

from indexer import images
from indexer.images import load_rgb, to_rgb

DEV = Path("/work/shared/data/store-photos-dev")
QUERY_SIDE = 768  # search.query.QUERY_DECODE_SIDE
BUDGET_ENV = "CATALOGUE_DECODE_BUDGET_MB"


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def worst_one_bit_png(path: Path) -> Path:
    """A few KB of 1-bit PNG just under the 100-Mpixel limit: a line drawing on white."""
    image = Image.new("1", (9999, 9999), 1)
    draw = ImageDraw.Draw(image)
    draw.ellipse((2000, 2500, 8000, 7500), outline=0, width=40)
    image.save(path)
    return path


def decoded_as_before(data: bytes, draft: int | None) -> Image.Image:
    """The decode before pictures were reduced: JPEG drafts, everything else whole, then upright RGB."""
    image = Image.open(io.BytesIO(data))
    if draft and image.format == "JPEG":
        scale = draft / min(image.size)
        image.draft("RGB", (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    image.load()
    if not (image.format == "JPEG" and "exif" not in image.info and "xmp" not in image.info):
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def normal_photos() -> list[tuple[str, bytes]]:
    """Real phone photos (dev set when present, else the page test's), one re-saved with a 90-degree
    EXIF rotation, and small PNGs of every mode the decoder converts."""
    dev = sorted(DEV.glob("*.jpg"))[:3] + sorted(DEV.glob("*.png"))[:1]
    photos = [(p.name, p.read_bytes()) for p in dev or [DATA / "page" / "IMG_6954.jpeg"]]
    phone = Image.open(io.BytesIO(photos[0][1]))
    exif = phone.getexif()
    exif[0x0112] = 6
    photos.append(("rotated.jpg", encoded(phone, "JPEG", exif=exif.tobytes(), quality=92)))
    rgba = Image.new("RGBA", (700, 500), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((100, 100, 600, 400), fill=(200, 30, 30, 160))
    photos.append(("rgba.png", encoded(rgba, "PNG")))
    photos.append(("palette.png", encoded(rgba.convert("RGB").quantize(16), "PNG")))
    photos.append(("one-bit.png", encoded(rgba.convert("1"), "PNG")))
    photos.append(
        ("grey16.png", encoded(Image.fromarray((np.arange(700 * 500) % 65536).astype(np.uint16).reshape(500, 700)), "PNG"))
    )
    return photos


@pytest.mark.parametrize("draft", [QUERY_SIDE, 512, None])
def test_normal_photos_decode_pixel_equal_to_before(draft):
    for name, data in normal_photos():
        before, now = decoded_as_before(data, draft), load_rgb(data, name=name, draft=draft)
        assert now.mode == "RGB" and now.size == before.size, name
        assert np.array_equal(np.asarray(now), np.asarray(before)), name


@pytest.mark.parametrize("mode", ["RGBA", "P", "PT", "1", "LA", "I;16", "CMYK", "RGB"])
def test_strips_convert_and_reduce_as_the_whole_picture_would(mode, monkeypatch):
    from indexer.images import reduced_rgb

    monkeypatch.setattr(images, "STRIP_PIXELS", 1000)  # dozens of strips on a small picture
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (203, 157, 4), dtype=np.uint8), "RGBA")
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65536, (203, 157), dtype=np.uint16))
    elif mode in ("P", "PT"):
        picture = rgba.convert("RGB").quantize(64)
        if mode == "PT":
            picture.info["transparency"] = 3
    else:
        picture = rgba.convert(mode)
    for factor in (1, 2, 3, 7):
        whole = to_rgb(picture).reduce(factor)
        assert np.array_equal(np.asarray(reduced_rgb(picture, factor)), np.asarray(whole)), factor


def test_a_worst_case_one_bit_png_is_searched_at_the_pipeline_size(synced, cli, store, tmp_path):
    photo = worst_one_bit_png(tmp_path / "scan.png")
    assert photo.stat().st_size < 100_000
    result = cli("search", "image", photo, "--qdrant-path", store, "--json", "--locate", "none")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)[0]
    # Reduced by whole blocks to a short side of at least 768 px: 9999 / 13, not 9999 px a side.
    assert (found["width"], found["height"]) == (770, 770)
    assert found["matches"]


def test_a_picture_over_the_decode_budget_is_refused_in_one_line(synced, cli, dam, store, tmp_path):
    big = tmp_path / "poster.png"
    Image.new("RGB", (3000, 3000), (90, 120, 200)).save(big)  # 36 MB decoded
    result = cli(
        "search", "image", big, dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--json", "--locate", "none",
        env={BUDGET_ENV: "16"},
    )  # fmt: skip
    assert result.exit_code == 7 and "Traceback" not in result.output  # the other photo is still searched
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert re.fullmatch(
        rf"Error: {re.escape(str(big))}: needs about \d+ MB to decode, more than the 16 MB decode budget; "
        rf"raise {BUDGET_ENV} to accept it",
        error,
    )
    assert [entry["matches"][0]["product_id"] for entry in json.loads(result.stdout)] == ["RED-BAG"]


def test_the_server_refuses_a_picture_over_the_budget_with_422(synced, store, tmp_path):
    poster = encoded(Image.new("RGB", (3000, 3000), (90, 120, 200)), "PNG")
    with serve_holding(store, **{BUDGET_ENV: "16"}) as port:
        url = f"http://127.0.0.1:{port}/v1/search"
        message = error_of(httpx.post(url, files={"image": ("poster.png", poster, "image/png")}, timeout=60), 422)
        assert message.startswith("poster.png: needs about") and "more than the 16 MB decode budget" in message
        ok = httpx.post(url, files={"image": ("bag.png", (DATA / "dam" / "CDBC040380000.jpeg").read_bytes())}, timeout=60)
        assert ok.status_code == 200, ok.text


def test_sync_workers_share_the_budget_and_report_what_cannot_fit(cli, dam, store, tiny_clip, monkeypatch):
    from indexer import prepare

    monkeypatch.setattr(prepare, "PROCESSES_FROM", 1)  # worker processes even for a small DAM
    Image.new("RGB", (3000, 3000), (90, 120, 200)).save(dam / "POSTER.png")  # about 70 MB to decode
    worst_one_bit_png(dam / "SCAN.png")  # about 130 MB
    sync = ("indexer", "sync", dam, "--qdrant-path", store, "--json", "--model", tiny_clip, "--workers", "2")
    result = cli(*sync, env={BUDGET_ENV: "40"})
    assert result.exit_code == 7, result.output
    failed = {f["path"]: f["error"] for f in json.loads(result.stdout)["failed"]}
    assert set(failed) == {"POSTER.png", "SCAN.png"}
    assert all("more than the 40 MB decode budget" in error for error in failed.values())
    # Both fit a budget of 200 MB, though not at once: the second worker waits for the first.
    result = cli(*sync, env={BUDGET_ENV: "200"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["failed"] == []
    assert {"POSTER.png", "SCAN.png"} <= {p.payload["path"] for p in all_points(store)}


def _hold_then_report(budget, needed: int, done) -> None:
    with budget.hold(needed, "x"):
        done.set()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_decode_waits_until_the_budget_has_room(kind):
    from indexer.decode_budget import DecodeBudget

    if kind == "thread":
        budget, done = DecodeBudget(100), threading.Event()
        worker = threading.Thread(target=_hold_then_report, args=(budget, 50, done))
    else:
        context = multiprocessing.get_context("spawn")
        budget, done = DecodeBudget.shared(context, 100), context.Event()
        worker = context.Process(target=_hold_then_report, args=(budget, 50, done))
    with budget.hold(80, "first"):
        worker.start()
        assert not done.wait(2)  # 80 + 50 > 100: the second decode waits
    try:
        assert done.wait(60)  # and runs once the first has given its bytes back
    finally:
        worker.join(60)
        if kind == "process" and worker.is_alive():
            worker.kill()
    assert budget.used == 0
