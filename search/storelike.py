"""Store-like pictures made from catalogue images: the product cut out of its studio backdrop,
shrunk, tilted, relit, blurred and placed in clutter.

Used to build synthetic query photos (to measure retrieval where no labelled
store photos exist) and store-like catalogue views. The clutter is other
catalogue products on a shelf-like wall: the hardest background for a
retrieval model, since it is made of real products.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from indexer.colour import foreground_mask, srgb_to_lab


@dataclass(frozen=True)
class ViewParams:
    """Ranges each view draws from; the defaults resemble a phone photo of a shelf."""

    size: tuple[int, int] = (480, 640)  # width, height of the photo
    scale: tuple[float, float] = (0.45, 0.8)  # product's longest side / photo's shortest side
    rotation: float = 10.0  # degrees, either way
    perspective: float = 0.08  # corner displacement, fraction of the product size
    brightness: tuple[float, float] = (0.7, 1.15)
    warmth: float = 0.12  # red/blue gain shift either way (colour temperature)
    blur: tuple[float, float] = (0.0, 1.2)  # gaussian radius in pixels
    jpeg_quality: tuple[int, int] = (60, 92)
    clutter_items: tuple[int, int] = (2, 6)


def product_cutout(image: Image.Image) -> Image.Image:
    """RGBA: the product with its studio backdrop made transparent (soft 1-pixel edge)."""
    rgb = image.convert("RGB")
    small = rgb.copy()
    small.thumbnail((256, 256))
    mask = foreground_mask(srgb_to_lab(np.asarray(small)))
    alpha = Image.fromarray((mask * 255).astype(np.uint8)).resize(rgb.size, Image.Resampling.BILINEAR)
    alpha = alpha.filter(ImageFilter.GaussianBlur(1))
    cutout = rgb.convert("RGBA")
    cutout.putalpha(alpha)
    bbox = alpha.point(lambda v: 255 if v > 32 else 0).getbbox()
    return cutout.crop(bbox) if bbox else cutout


def clutter_background(size: tuple[int, int], rng: np.random.Generator, fillers: list[Image.Image], items: int) -> Image.Image:
    """A neutral wall with shelf edges and light falloff, other products around the edges."""
    width, height = size
    top, bottom = _neutral(rng, 120, 245), _neutral(rng, 70, 225)
    ramp = np.linspace(0, 1, height)[:, None, None]
    wall = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    wall += rng.normal(0, 6, (height, width, 3))
    background = Image.fromarray(np.clip(wall, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(background)
    for y in rng.integers(height // 5, height, 2):
        shade = tuple(int(v) for v in _neutral(rng, 40, 250))
        draw.rectangle((0, int(y), width, int(y) + int(rng.integers(6, 24))), fill=shade)
    for _ in range(items if fillers else 0):
        filler = product_cutout(fillers[int(rng.integers(len(fillers)))])
        side = int(min(size) * rng.uniform(0.2, 0.45))
        filler.thumbnail((side, side))
        # Around the edges: the photographed product owns the middle of the frame.
        if rng.random() < 0.5:
            x = int(rng.choice([rng.uniform(-0.3, 0.1), rng.uniform(0.65, 0.95)]) * width)
            y = int(rng.uniform(-0.2, 0.9) * height)
        else:
            x = int(rng.uniform(-0.2, 0.9) * width)
            y = int(rng.choice([rng.uniform(-0.3, 0.05), rng.uniform(0.7, 0.95)]) * height)
        background.paste(filler, (x, y), filler)
    return background.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))


def store_view(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    fillers: list[Image.Image] = (),
    params: ViewParams = ViewParams(),
) -> Image.Image:
    """One synthetic store photo of the catalogue product in `image`."""
    width, height = params.size
    product = product_cutout(image)
    side = int(min(width, height) * rng.uniform(*params.scale))
    product = product.resize(_fit(product.size, side), Image.Resampling.BICUBIC)
    product = _perspective(product, rng, params.perspective)
    product = product.rotate(float(rng.uniform(-params.rotation, params.rotation)), Image.Resampling.BICUBIC, expand=True)
    photo = clutter_background(params.size, rng, list(fillers), int(rng.integers(*params.clutter_items)))
    # Products sit near the centre of a phone photo, rarely exactly on it.
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.15, 0.15) * height
    photo.paste(product, (int(cx - product.width / 2), int(cy - product.height / 2)), product)
    photo = _relight(photo, rng, params)
    radius = float(rng.uniform(*params.blur))
    if radius > 0.1:
        photo = photo.filter(ImageFilter.GaussianBlur(radius))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=int(rng.integers(*params.jpeg_quality)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _neutral(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """A store-interior tone: grey, beige or cool white with a slight tint."""
    level = rng.uniform(low, high)
    return np.clip(level + rng.normal(0, 6, 3) + np.array([4.0, 2.0, -4.0]) * rng.uniform(-1, 2), 0, 255)


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _perspective(image: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """Move each corner a little: the product seen slightly off-axis."""
    if amount <= 0:
        return image
    w, h = image.size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    moved = corners + rng.uniform(-amount, amount, corners.shape) * [w, h]
    coefficients = _perspective_coefficients(moved, corners)
    return image.transform((w, h), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)


def _perspective_coefficients(source: np.ndarray, target: np.ndarray) -> list[float]:
    """PIL's 8 perspective coefficients mapping output corners `target` to input corners `source`."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows), source.reshape(8)).tolist()


def _relight(photo: Image.Image, rng: np.random.Generator, params: ViewParams) -> Image.Image:
    photo = ImageEnhance.Brightness(photo).enhance(float(rng.uniform(*params.brightness)))
    warmth = float(rng.uniform(-params.warmth, params.warmth))
    pixels = np.asarray(photo, dtype=np.float64) * [1 + warmth, 1.0, 1 - warmth]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
