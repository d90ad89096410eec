"""Where is the product in the photo? Localisers turn a photo into regions to match.

A region is a box plus the views of it that get embedded; the query vector
of a region is the mean of its views' vectors, so its cosine with a catalogue
image is the mean of the views' cosines. Averaging a few views beats betting
on one crop: on real store photos the mean of a few centre views ranked
better than the whole photo, any single crop, and the crop that matches the
catalogue best (background crops match random products).

- `none`: the whole photo, as plain `search image` did before localisation.
- `centre` (default): photographers centre the product; views are the whole
  photo, centre crops of 0.7 and 0.5 of the short side, and the product cut
  out by GrabCut on white; colours come from the cut-out.
- `proposals`: model-free multi-product search: square crops at four scales
  scored by how much they look like some catalogue product, kept by
  non-maximum suppression; one region (and one result group) per kept crop.
- `owlv2`: an open-vocabulary detector (search.detect), one region per box.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels


@dataclass(frozen=True)
class Region:
    box: Box  # where the product is; its foreground and colours are taken inside it
    views: tuple[Box, ...]  # crops that are embedded and averaged
    cutout: bool = True  # also embed the GrabCut product on white, take colours from the cut-out
    score: float = 1.0  # the localiser's belief that a product is here
    label: str | None = None  # what a detector found ("a handbag")


class Localiser(ABC):
    name: str

    @abstractmethod
    def locate(self, image: Image.Image) -> list[Region]:
        """Regions, most likely product first; never empty."""

    def category_of(self, label: str | None) -> str | None:
        """The catalogue category a region's label restricts the search to (detectors only)."""
        return None


class WholePhoto(Localiser):
    name = "none"

    def locate(self, image: Image.Image) -> list[Region]:
        box = (0, 0, image.width, image.height)
        return [Region(box=box, views=(box,), cutout=False)]


class CentreViews(Localiser):
    name = "centre"
    #: Centre crops embedded besides the whole photo, as shares of the short side.
    CROPS = (0.7, 0.5)
    #: Share of the short side, centred, where the product is looked for (GrabCut, colours).
    PRODUCT_AREA = 0.9

    def locate(self, image: Image.Image) -> list[Region]:
        whole = (0, 0, image.width, image.height)
        crops = tuple(centre_box(image.size, share) for share in self.CROPS)
        return [Region(box=centre_box(image.size, self.PRODUCT_AREA), views=(whole, *crops))]


class CropProposals(Localiser):
    """Square crops scored by the embedding itself: the mean cosine of a crop's ten nearest
    catalogue images says how product-like it is; the best crops that do not overlap are kept."""

    name = "proposals"
    SCALES = (0.35, 0.5, 0.65, 0.85)
    OVERLAP = 0.3

    def __init__(self, productness: Callable[[list[Image.Image]], np.ndarray], max_regions: int = 5):
        self.productness = productness
        self.max_regions = max_regions

    def locate(self, image: Image.Image) -> list[Region]:
        boxes = proposal_boxes(image.size, self.SCALES)
        scores = self.productness([image.crop(box) for box in boxes])
        keep = non_max_suppression(boxes, scores, self.OVERLAP)[: self.max_regions]
        return [Region(box=boxes[i], views=(boxes[i],), score=float(scores[i])) for i in keep]


def centre_box(size: tuple[int, int], share: float) -> Box:
    """The centred square whose side is `share` of the short side."""
    width, height = size
    side = min(width, height) * share
    x0, y0 = (width - side) / 2, (height - side) / 2
    return round(x0), round(y0), round(x0 + side), round(y0 + side)


def proposal_boxes(size: tuple[int, int], scales: Sequence[float]) -> list[Box]:
    """Squares of each scale (share of the short side) tiled with half-side strides, edge to edge."""
    width, height = size
    boxes = []
    for scale in scales:
        side = max(1, round(min(width, height) * scale))
        columns = max(1, round((width - side) / (side / 2)) + 1)
        rows = max(1, round((height - side) / (side / 2)) + 1)
        for i in range(columns):
            for j in range(rows):
                x0 = round((width - side) * (i / (columns - 1) if columns > 1 else 0.5))
                y0 = round((height - side) * (j / (rows - 1) if rows > 1 else 0.5))
                boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def non_max_suppression(boxes: Sequence[Box], scores: np.ndarray, overlap: float) -> list[int]:
    """Indices of the best boxes, best first, dropping any that overlaps a kept one by more than `overlap` IoU."""
    import cv2

    rects = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in boxes]
    shifted = [float(s - np.min(scores)) + 1.0 for s in scores]  # OpenCV keeps scores > its threshold, 0
    keep = cv2.dnn.NMSBoxes(rects, shifted, score_threshold=0.0, nms_threshold=overlap)
    keep = [int(i) for i in np.asarray(keep).reshape(-1)]
    return sorted(keep, key=lambda i: -scores[i])


def expand(box: Box, size: tuple[int, int], margin: float) -> Box:
    """`box` grown by `margin` of its size on every side, clipped to the photo."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return max(0, round(x0 - dx)), max(0, round(y0 - dy)), min(size[0], round(x1 + dx)), min(size[1], round(y1 + dy))
