"""Turn an image file into an upright 8-bit RGB picture, or a one-line reason why not.

Catalogue folders and phone photos hold every oddity PIL can open: EXIF
rotation, CMYK, palettes, alpha, 16-bit greys, truncated uploads and the
occasional decompression bomb. Everything downstream can then assume
`PIL.Image` in mode RGB, of a shape the models can take, no larger than the
caller needs: the full-size picture lives only as decoded, inside the decode
budget (`indexer.decode_budget`).

Refused, each with one line: anything but a regular file (a FIFO would
block forever, /dev/zero never ends), files above CATALOGUE_MAX_FILE_MB,
images above CATALOGUE_MAX_PIXELS, and images thinner than MIN_SIDE pixels
or more elongated than MAX_ASPECT:1 (a 100000x1 strip is a few hundred
bytes, and CLIP's resize of its short side to 224 px would make it 22
million pixels wide).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from indexer import settings
from indexer.decode_budget import process_budget
from indexer.errors import BadInputError, first_line

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})

#: The short side must be at least this many pixels, the long side at most MAX_ASPECT times the short.
MIN_SIDE = 16
MAX_ASPECT = 12.0
#: Formats Pillow can decode at a smaller scale (MPO: the JPEG of phones that add a depth map).
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
#: Pixels converted to RGB at a time: the full-size picture is only ever held as decoded.
STRIP_PIXELS = 2**20
#: Bytes a pixel of a strip may take while it converts (16-bit greys pass through float64 in numpy).
_STRIP_BYTES_PER_PIXEL = 32
#: How Pillow stores a decoded pixel, by mode (others: 4 bytes).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def max_pixels() -> int:
    """Images above this many pixels are refused before decoding: a PNG of a few KB can hold a
    picture of gigabytes (CATALOGUE_MAX_PIXELS)."""
    return settings.get("max_pixels")


def max_file_bytes() -> int:
    """Files above this size are refused without being read (CATALOGUE_MAX_FILE_MB)."""
    return settings.get("max_file_mb") * 2**20


def read_file(path: str | Path, *, label: str | None = None) -> bytes:
    """The bytes of a regular file, refused above the size limit; BadInputError (one line) for anything else."""
    label = label or str(path)
    try:
        # Non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInputError(f"{label}: no such file") from None
    except OSError as exc:
        raise BadInputError(f"{label}: cannot read ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise BadInputError(f"{label}: not a regular file ({_kind(info.st_mode)}); only image files are read")
    with os.fdopen(fd, "rb") as handle:
        limit = max_file_bytes()
        too_big = f"{label}: larger than the {limit // 2**20:,} MB file limit; raise CATALOGUE_MAX_FILE_MB to accept it"
        if info.st_size > limit:
            raise BadInputError(too_big)
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise BadInputError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise BadInputError(too_big)
    return data


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def load_rgb(source: str | Path | bytes, *, name: str | None = None, draft: int | None = None) -> Image.Image:
    """Decode `source` (a path or the file's bytes) into an upright RGB image.

    `draft` is the short side the caller needs: a larger picture comes out
    reduced by a whole factor that keeps its short side at least `draft`
    pixels (JPEG decodes at a smaller scale, other formats are averaged over
    blocks as they are converted), so nothing downstream holds the full-size
    picture. Without it the picture keeps its size. The decode holds its
    estimated memory in the process's decode budget while it runs. Raises
    BadInputError with a one-line message for anything that is not a usable
    image, or that needs more memory than the whole budget.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "image")
    data = source if isinstance(source, bytes) else read_file(source, label=label)
    if not data:
        raise BadInputError(f"{label}: empty file (0 bytes)")
    stream = io.BytesIO(data)
    limit = max_pixels()
    # PIL warns above its MAX_IMAGE_PIXELS and refuses above twice that; ours is the limit that counts.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limit)
    too_big = f"above the {limit:,}-pixel limit (possible decompression bomb); raise CATALOGUE_MAX_PIXELS to accept it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
        width, height = image.size
        if width * height > limit:
            raise BadInputError(f"{label}: {width}x{height} pixels is {too_big}")
        if min(width, height) < MIN_SIDE:
            raise BadInputError(f"{label}: {width}x{height} pixels is too small; at least {MIN_SIDE} pixels a side")
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise BadInputError(f"{label}: {width}x{height} pixels is too elongated; at most {MAX_ASPECT:g}:1")
        if draft and image.format in JPEG_FORMATS:
            image.draft("RGB", _draft_size(image.size, draft))  # sets the size and mode the decode will have
        factor = reduction(image.size, draft)
        with process_budget().hold(decode_bytes(image.mode, image.size, factor), label):
            image.load()
            rgb = reduced_rgb(image, factor)
            orientation = None
            if not (image.format == "JPEG" and "exif" not in image.info and "xmp" not in image.info):
                # Parsing the metadata is a large share of decoding a small JPEG; PNG may keep it after the pixels.
                orientation = image.getexif().get(ExifTags.Base.Orientation)
            if rgb is not image:
                image.close()  # the full-size picture goes before its bytes go back to the budget
        return _upright(rgb, orientation)
    except BadInputError:
        raise
    except UnidentifiedImageError:
        raise BadInputError(f"{label}: not an image PIL can read (jpg, png, webp expected)") from None
    except Image.DecompressionBombError:
        raise BadInputError(f"{label}: its size is {too_big}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated data, broken headers and corrupt chunks surface as these.
        raise BadInputError(f"{label}: unreadable image ({first_line(exc)})") from None


def reduction(size: tuple[int, int], short_side: int | None) -> int:
    """The whole factor that brings `size` nearest `short_side` from above (1: keep the size)."""
    if not short_side:
        return 1
    return max(1, min(size) // short_side)


def decode_bytes(mode: str, size: tuple[int, int], factor: int) -> int:
    """What decoding a picture of `mode` and `size` into RGB reduced by `factor` holds at its peak:
    the picture as decoded, then the strip being converted and the RGB result beside it."""
    width, height = size
    decoded = width * height * _BYTES_PER_PIXEL.get(mode, 4)
    if mode == "RGB" and factor == 1:
        return decoded  # it is the result
    strip = width * min(height, _strip_rows(width, factor)) * _STRIP_BYTES_PER_PIXEL
    return decoded + strip + -(-width // factor) * -(-height // factor) * 4  # Pillow keeps RGB in 4 bytes a pixel


def reduced_rgb(image: Image.Image, factor: int) -> Image.Image:
    """`image` in RGB, each `factor` x `factor` block averaged into one pixel.

    The conversion runs a strip at a time: converting a 1-bit or palette picture
    whole would first make it 4 bytes a pixel (and compositing alpha, several
    times that) at full size. A strip of whole blocks converts and reduces to
    exactly what the whole picture would.
    """
    if image.mode == "RGB" and factor == 1:
        return image
    width, height = image.size
    scale = _grey_scale(image)
    rows = _strip_rows(width, factor)
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = to_rgb(image.crop((0, top, width, min(height, top + rows))), scale)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def _strip_rows(width: int, factor: int) -> int:
    """Rows per converted strip: about STRIP_PIXELS, in whole blocks of `factor` rows."""
    return max(1, STRIP_PIXELS // (width * factor)) * factor


def _upright(image: Image.Image, orientation: int | None) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def to_rgb(image: Image.Image, grey_scale: float | None = None) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white like a DAM shot.

    `grey_scale` multiplies 16-bit and float greys into 0..255; by default it is
    chosen from this image's own values (pass the whole picture's for a strip).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _GREY_MODES:
        values = np.asarray(image)
        scale = _grey_scale_of(values.min(initial=0), values.max(initial=0)) if grey_scale is None else grey_scale
        return Image.fromarray(np.clip(np.rint(values.astype(np.float64) * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_scale(image: Image.Image) -> float | None:
    """The factor that brings a 16-bit or float picture's greys into 0..255, read a strip at a time."""
    if image.mode not in _GREY_MODES:
        return None
    width, height = image.size
    rows = _strip_rows(width, 1)
    low, high = 0, 0
    for top in range(0, height, rows):
        values = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        low, high = min(low, values.min(initial=0)), max(high, values.max(initial=0))
    return _grey_scale_of(low, high)


def _grey_scale_of(low, high) -> float:
    """Scale 16-bit or float greys to 0..255 instead of clipping them white."""
    if high <= 1.0 and low >= 0.0:
        return 255.0  # float images in 0..1
    if high <= 255:
        return 1.0
    return 1 / 257.0  # 0..65535 -> 0..255


def _draft_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    width, height = size
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
