"""Turn an image file into an upright 8-bit RGB picture, or a one-line reason why not.

Catalogue folders and phone photos hold every oddity PIL can open: EXIF
rotation, CMYK, palettes, alpha, 16-bit greys, truncated uploads and the
occasional decompression bomb. Everything downstream can then assume
`PIL.Image` in mode RGB, of a shape the models can take.

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
from PIL import Image, ImageOps, UnidentifiedImageError

from indexer.errors import BadInputError, first_line

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})

#: Images above this many pixels are refused before decoding (a 20k x 20k PNG
#: of a few KB decodes to 1.6 GB). Override with CATALOGUE_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 100_000_000


#: Files above this many MB are refused without being read. Override with CATALOGUE_MAX_FILE_MB.
DEFAULT_MAX_FILE_MB = 256
#: The short side must be at least this many pixels, the long side at most MAX_ASPECT times the short.
MIN_SIDE = 16
MAX_ASPECT = 12.0


def max_pixels() -> int:
    value = os.environ.get("CATALOGUE_MAX_PIXELS", "")
    return int(value) if value.isdigit() else DEFAULT_MAX_PIXELS


def max_file_bytes() -> int:
    value = os.environ.get("CATALOGUE_MAX_FILE_MB", "")
    return (int(value) if value.isdigit() else DEFAULT_MAX_FILE_MB) * 2**20


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

    `draft` lets JPEG decoding scale down by powers of two while keeping the
    short side at least `draft` pixels: a 12 MP phone photo needed at 640 px
    then decodes several times faster. Raises BadInputError with a one-line
    message for anything that is not a usable image.
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
        if draft and image.format == "JPEG":
            image.draft("RGB", _draft_size(image.size, draft))
        image.load()
        if not (image.format == "JPEG" and "exif" not in image.info and "xmp" not in image.info):
            image = ImageOps.exif_transpose(image)  # parses the metadata: a third of decoding a catalogue JPEG
        return to_rgb(image)
    except BadInputError:
        raise
    except UnidentifiedImageError:
        raise BadInputError(f"{label}: not an image PIL can read (jpg, png, webp expected)") from None
    except Image.DecompressionBombError:
        raise BadInputError(f"{label}: its size is {too_big}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated data, broken headers and corrupt chunks surface as these.
        raise BadInputError(f"{label}: unreadable image ({first_line(exc)})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white like a DAM shot."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float greys to 0..255 instead of clipping them white."""
    values = values.astype(np.float64)
    if values.max(initial=0) <= 1.0 and values.min(initial=0) >= 0.0:
        scaled = values * 255.0  # float images in 0..1
    elif values.max(initial=0) <= 255:
        scaled = values
    else:
        scaled = values / 257.0  # 0..65535 -> 0..255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _draft_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    width, height = size
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
