"""Decoding: whatever PIL opens comes out upright 8-bit RGB, or as a one-line BadInputError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexer.errors import BadInputError
from indexer.images import load_rgb


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    # A landscape sensor image tagged "rotate 90 CW to view" must come out portrait.
    image = Image.new("RGB", (60, 40), "white")
    image.paste((255, 0, 0), (0, 0, 10, 40))  # red stripe on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_rgb(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (40, 60)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 80  # the left stripe is now on top


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (5, 5, 15, 15))
    out = np.asarray(load_rgb(encoded(image, "PNG")))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[10, 10]) == (0, 0, 255)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.paste(1, (5, 5, 15, 15))
    out = np.asarray(load_rgb(encoded(image, "PNG", transparency=0)))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[10, 10]) == (200, 0, 0)


def test_cmyk_becomes_rgb():
    image = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    out = load_rgb(encoded(image, "JPEG", quality=95))
    r, g, b = np.asarray(out).reshape(-1, 3).mean(axis=0)
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.full((16, 16), 32768, dtype=np.uint16)  # mid grey in 16 bits
    out = load_rgb(encoded(Image.fromarray(values), "PNG"))
    assert out.mode == "RGB"
    assert abs(int(np.asarray(out)[0, 0, 0]) - 128) <= 1


def test_grey_and_webp_load():
    assert load_rgb(encoded(Image.new("L", (19, 19), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    assert load_rgb(encoded(Image.new("RGB", (19, 17), (10, 200, 10)), "WEBP", lossless=True)).size == (19, 17)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (encoded(Image.new("RGB", (300, 300), "red"), "JPEG")[:400], "unreadable image"),
        (encoded(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "unreadable image"),
    ],
)
def test_unusable_bytes_raise_one_line(data, message):
    with pytest.raises(BadInputError) as error:
        load_rgb(data, name="x.jpg")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setenv("CATALOGUE_MAX_PIXELS", "10000")
    with pytest.raises(BadInputError, match="pixel limit"):
        load_rgb(encoded(Image.new("RGB", (200, 100)), "PNG"))


def test_bomb_beyond_pils_own_guard_gets_our_message():
    import struct
    import zlib

    png = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    png[16:24] = struct.pack(">II", 15000, 15000)  # 225 MP: above PIL's refusal point (2 x 89 MP)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    with pytest.raises(BadInputError, match="CATALOGUE_MAX_PIXELS"):
        load_rgb(bytes(png))


def test_jpeg_draft_decodes_smaller_but_not_below_the_asked_side():
    big = encoded(Image.new("RGB", (2000, 1500), (30, 60, 90)), "JPEG")
    out = load_rgb(big, draft=300)
    assert min(out.size) >= 300 and out.size[0] < 2000


def test_missing_path(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        load_rgb(tmp_path / "absent.jpg")


@pytest.mark.parametrize(
    "size, words",
    [
        ((100000, 1), "too small"),
        ((5000, 1), "too small"),
        ((200, 1), "too small"),
        ((2, 300), "too small"),
        ((15, 200), "too small"),
        ((2000, 100), "too elongated"),
        ((100, 1300), "too elongated"),
    ],
)
def test_thin_and_tiny_images_are_refused_before_decoding(size, words):
    with pytest.raises(BadInputError, match=words):
        load_rgb(encoded(Image.new("L", size, 128), "PNG"), name="strip.png")


def test_shapes_at_the_bounds_still_load():
    assert load_rgb(encoded(Image.new("RGB", (16, 16)), "PNG")).size == (16, 16)
    assert load_rgb(encoded(Image.new("RGB", (192, 16)), "PNG")).size == (192, 16)  # exactly 12:1


def test_only_regular_files_are_read(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match=r"not a regular file \(a FIFO\)"):
        load_rgb(fifo)  # returns at once instead of waiting for a writer
    with pytest.raises(BadInputError, match=r"not a regular file \(a device\)"):
        load_rgb("/dev/zero")
    with pytest.raises(BadInputError, match=r"not a regular file \(a folder\)"):
        load_rgb(tmp_path)


def test_files_above_the_size_limit_are_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("CATALOGUE_MAX_FILE_MB", "1")
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:
        handle.truncate(2 * 2**20)  # a sparse 2 MB file: nothing is read to refuse it
    with pytest.raises(BadInputError, match="larger than the 1 MB file limit"):
        load_rgb(big)
