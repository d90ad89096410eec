"""Which pixels of a located region are the product: GrabCut, seeded by the region itself.

Store backgrounds are not flat, so the studio-backdrop rule of indexer.colour
does not apply. GrabCut (OpenCV) models the region's border as background and
its centre as probable product, then separates the two by colour and
contrast. The mask gives the product's colours, and the product pasted on
white: a view that looks like a catalogue shot.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: GrabCut runs on a thumbnail: masks need no detail, and its time grows with the pixels.
GRABCUT_SIDE = 160
GRABCUT_ITERATIONS = 3
#: Inner share of the region that may hold the product (the rest seeds the background model).
PRODUCT_SHARE = 0.8
#: Masks keeping less than this share are treated as failures: the whole region is used.
MIN_SHARE = 0.03


def product_mask(region: Image.Image) -> np.ndarray:
    """Boolean mask, region-sized, of the product's pixels (all True when GrabCut finds nothing)."""
    import cv2

    small = region.copy()
    small.thumbnail((GRABCUT_SIDE, GRABCUT_SIDE))
    pixels = np.ascontiguousarray(np.asarray(small.convert("RGB"))[:, :, ::-1])
    height, width = pixels.shape[:2]
    margin = (1 - PRODUCT_SHARE) / 2
    rect = (int(width * margin), int(height * margin), max(1, int(width * PRODUCT_SHARE)), max(1, int(height * PRODUCT_SHARE)))
    labels = np.zeros((height, width), np.uint8)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models at random: same photo, same mask
    try:
        cv2.grabCut(pixels, labels, rect, np.zeros((1, 65)), np.zeros((1, 65)), GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # too small or flat to model: no separation to be had
        return np.ones((region.height, region.width), dtype=bool)
    mask = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if mask.mean() < MIN_SHARE:
        return np.ones((region.height, region.width), dtype=bool)
    full = Image.fromarray(mask.astype(np.uint8) * 255).resize(region.size, Image.Resampling.NEAREST)
    return np.asarray(full) > 0


def on_white(region: Image.Image, mask: np.ndarray, margin: float = 0.05) -> Image.Image:
    """The product alone, cropped to its mask and centred on a white square, like a DAM shot."""
    if mask.all():
        return region
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    pixels = np.where(mask[..., None], np.asarray(region.convert("RGB")), 255).astype(np.uint8)
    product = Image.fromarray(pixels).crop(box)
    side = int(max(product.size) * (1 + 2 * margin))
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(product, ((side - product.width) // 2, (side - product.height) // 2))
    return canvas
