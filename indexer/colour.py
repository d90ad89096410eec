"""Dominant colours of a product: foreground pixels, k-means in CIELAB.

CIELAB is used because Euclidean distance there (CIE76 delta E) roughly
follows perceived colour difference: about 2.3 is just noticeable, 10 is
clearly different, 50 is a different colour family. The background is
removed first so a black bag on white is "black", not "white".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Pixels of the longest side the colour analysis works on; colour needs no detail.
ANALYSIS_SIZE = 96
#: delta E within which a pixel counts as "background coloured".
BACKGROUND_TOLERANCE = 10.0
#: Share of the border that must look like one flat colour to call it a backdrop.
MIN_BORDER_SHARE = 0.6
#: A mask keeping less than this share of the image means we removed the product.
MIN_FOREGROUND_SHARE = 0.01
#: Bits per RGB channel of the colour bins the clustering runs on (32,768 bins).
QUANT_BITS = 5
_BINS = 1 << (3 * QUANT_BITS)
KMEANS_ITERATIONS = 20
#: k-means runs from different seeds; the tightest clustering wins (steadier than one run).
KMEANS_RESTARTS = 3


@dataclass(frozen=True)
class Palette:
    """k colours in CIELAB with the share of foreground pixels each covers, largest first."""

    lab: np.ndarray  # (k, 3) float: L in 0..100, a and b in about -128..127
    weights: np.ndarray  # (k,) float, sums to 1
    foreground_share: float  # share of the analysed image that was foreground

    @property
    def dominant(self) -> np.ndarray:
        return self.lab[0]

    def to_payload(self) -> dict:
        return {
            "dominant": _lab_dict(self.dominant),
            "palette": [{**_lab_dict(lab), "weight": round(float(w), 4)} for lab, w in zip(self.lab, self.weights)],
            "foreground": round(self.foreground_share, 4),
        }

    @classmethod
    def from_payload(cls, payload: dict) -> Palette:
        entries = payload["palette"]
        lab = np.array([[e["L"], e["a"], e["b"]] for e in entries], dtype=np.float64)
        weights = np.array([e["weight"] for e in entries], dtype=np.float64)
        return cls(lab=lab, weights=weights, foreground_share=float(payload.get("foreground", 1.0)))


def _lab_dict(lab: np.ndarray) -> dict:
    return {"L": round(float(lab[0]), 2), "a": round(float(lab[1]), 2), "b": round(float(lab[2]), 2)}


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8, any shape ending in 3) to CIELAB under D65, the standard pairing.

    float32: far below a noticeable difference from float64, and cheaper (it runs on every pixel of
    every catalogue image).
    """
    xyz = _SRGB_TO_LINEAR_32[np.asarray(rgb, dtype=np.uint8)] @ _LINEAR_TO_WHITE_XYZ_32
    f = np.cbrt(xyz)
    low = xyz <= _EPSILON
    if low.any():
        f[low] = (np.float32(_KAPPA) * xyz[low] + 16.0) / 116.0
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def _linear_to_lab(linear: np.ndarray) -> np.ndarray:
    """Linear-light RGB (0..1, any shape ending in 3) to CIELAB under D65, in float64."""
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16.0) / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_EPSILON = 216 / 24389
_KAPPA = 24389 / 27


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB's transfer curve undone: encoded 0..1 to linear light 0..1."""
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


_SRGB_TO_LINEAR_32 = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)
_LINEAR_TO_WHITE_XYZ_32 = (_SRGB_TO_XYZ / _D65_WHITE[:, None]).T.astype(np.float32)


def extract_palette(image: Image.Image, k: int = 3, *, mask: np.ndarray | None = None, seed: int = 0) -> Palette:
    """Dominant colours of `image`'s foreground (or of `mask`'s pixels when given).

    A `mask` must match the analysis size; callers that know where the product
    is (a detector box, a segmentation) pass it, studio shots let the backdrop
    detection find it.

    The thumbnail's colours are counted in RGB bins of QUANT_BITS per channel;
    each occupied bin becomes one CIELAB point (the Lab of its pixels' mean
    RGB) weighing its pixel count, and a weighted k-means clusters those few
    hundred points: every foreground pixel counts, and the clustering costs
    what a few hundred points cost.
    """
    small = thumbnail(image)
    rgb = np.asarray(small)
    bins = _bin_index(rgb)
    if mask is None:
        mask = foreground_mask(srgb_to_lab(rgb))
    elif mask.shape != rgb.shape[:2]:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(small.size, Image.Resampling.NEAREST)) > 0
    if not mask.any():
        mask = np.ones(rgb.shape[:2], dtype=bool)
    lab, counts = _binned_lab(rgb[mask], bins[mask])
    centres, weights = _weighted_kmeans(lab, counts, k, seed, KMEANS_RESTARTS)
    order = np.argsort(-weights, kind="stable")
    return Palette(lab=centres[order], weights=weights[order], foreground_share=float(mask.mean()))


def thumbnail(image: Image.Image) -> Image.Image:
    """The RGB picture the colour analysis works on: at most ANALYSIS_SIZE pixels a side, bilinear.

    (A box-averaged thumbnail is cheaper but moves more dominant colours away from the full-size
    picture's: `benchmarks/colour_drift.py` compares them.)
    """
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BILINEAR)
    return small


def _bin_index(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's RGB bin: the top QUANT_BITS of each channel, packed into one int."""
    q = rgb >> (8 - QUANT_BITS)
    return (q[..., 0].astype(np.intp) << (2 * QUANT_BITS)) | (q[..., 1].astype(np.intp) << QUANT_BITS) | q[..., 2]


def _binned_lab(rgb: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Lab of the mean RGB of each occupied bin, its pixel count) for pixels (n, 3) and their bins (n,)."""
    counts = np.bincount(bins, minlength=_BINS)
    occupied = np.flatnonzero(counts)
    position = np.empty(_BINS, dtype=np.intp)
    position[occupied] = np.arange(len(occupied))
    compact = position[bins]
    sums = np.stack([np.bincount(compact, weights=rgb[:, c], minlength=len(occupied)) for c in range(3)], axis=1)
    n = counts[occupied].astype(np.float64)
    return _rgb_to_lab(sums / n[:, None]), n


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """`srgb_to_lab` for float sRGB in 0..255 (bin means), shape (n, 3)."""
    return _linear_to_lab(_srgb_to_linear(rgb / 255.0))


def foreground_mask(lab: np.ndarray) -> np.ndarray:
    """Pixels that are not the flat backdrop, as a boolean (h, w) mask.

    The backdrop colour is the median of the one-pixel border, trusted only when
    most of the border sits close to it (a studio shot); then every
    backdrop-coloured region touching the border is removed. Backdrop-coloured
    areas enclosed by the product (a white sole, a white dial) stay. Images with
    no flat border (store photos) keep every pixel.
    """
    border = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    backdrop = np.median(border, axis=0)
    offset = lab - backdrop
    close = np.einsum("...i,...i->...", offset, offset) < BACKGROUND_TOLERANCE**2
    border_close = np.concatenate([close[0], close[-1], close[1:-1, 0], close[1:-1, -1]])
    if border_close.mean() < MIN_BORDER_SHARE:
        return np.ones(close.shape, dtype=bool)
    import cv2  # imported on first use: only catalogue shots get this far

    # 4-connected regions, as scipy.ndimage.label's default; OpenCV spares the workers scipy's slow import.
    count, labels = cv2.connectedComponents(close.view(np.uint8), connectivity=4)
    touches_edge = np.zeros(count, dtype=bool)
    touches_edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    touches_edge[0] = False  # label 0: pixels not close to the backdrop colour
    foreground = ~touches_edge[labels]
    if foreground.mean() < MIN_FOREGROUND_SHARE:
        return np.ones(close.shape, dtype=bool)
    return foreground


def _weighted_kmeans(
    points: np.ndarray, weights: np.ndarray, k: int, seed: int, restarts: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means: each point counts as `weight` equal points; the best (lowest inertia) of
    `restarts` runs of k-means++ then Lloyd iterations, seeded `seed`, `seed + 1`, ...

    One run equals scipy's `kmeans2(minit="++")` on the expanded points, step for step (tests
    compare the two), but costs what a few hundred colour bins cost, not thousands of pixels.
    The runs go side by side in one set of array operations, not one after another.
    """
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if k <= 1 or len(points) <= k or np.ptp(points, axis=0).max() < 1e-6:
        return (weights @ points / weights.sum())[None, :], np.ones(1)
    centres, labels = _lloyd(points, weights, _kmeans_plus_plus(points, weights, k, range(seed, seed + restarts)))
    inertia = ((points[None] - np.take_along_axis(centres, labels[:, :, None], axis=1)) ** 2).sum(axis=2) @ weights
    best = int(np.argmin(inertia))  # the first of equals, as one run after another would keep
    mass = np.bincount(labels[best], weights=weights, minlength=k)
    keep = mass > 0  # kmeans2 returns empty clusters too; a palette has no use for them
    return centres[best][keep], mass[keep] / mass.sum()


def _kmeans_plus_plus(points: np.ndarray, weights: np.ndarray, k: int, seeds) -> np.ndarray:
    """kmeans2's "++" initial centres for each seed, (runs, k, dims), each point drawn as often as its weight says."""
    draws = np.stack([_uniforms(seed, k) for seed in seeds])  # (runs, k)
    last = len(points) - 1
    centres = np.empty((len(draws), k, points.shape[1]))
    cumulative = weights.cumsum() / weights.sum()
    centres[:, 0] = points[np.minimum(np.searchsorted(cumulative, draws[:, 0]), last)]
    for i in range(1, k):
        nearest = _squared_distances(centres[:, :i], points).min(axis=1) * weights  # (runs, n)
        cumulative = (nearest / nearest.sum(axis=1, keepdims=True)).cumsum(axis=1)
        # searchsorted row by row: the count of cumulative values below each run's draw
        chosen = (cumulative < draws[:, i : i + 1]).sum(axis=1)
        centres[:, i] = points[np.minimum(chosen, last)]
    return centres


@functools.cache
def _uniforms(seed: int, count: int) -> np.ndarray:
    """The first `count` draws of `RandomState(seed).uniform()`, made once: seeding is slow next to the draws."""
    values = np.random.RandomState(seed).uniform(size=count)
    values.flags.writeable = False
    return values


def _lloyd(points: np.ndarray, weights: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd iterations from each run's `centres` (runs, k, dims) until its assignment
    stops changing: (centres, labels (runs, n))."""
    runs, k, _ = centres.shape
    centres = centres.copy()
    weighted = points * weights[:, None]
    transposed = points.T.copy()
    clusters = np.arange(k)[None, :, None]
    labels = np.zeros((runs, len(points)), dtype=np.intp)
    active = np.ones(runs, dtype=bool)
    previous = None
    for _ in range(KMEANS_ITERATIONS):
        # Nearest centre by |c|^2 - 2 c.x (the |x|^2 term is the same for every centre).
        products = (centres.reshape(-1, centres.shape[2]) @ transposed).reshape(runs, k, -1)  # one matrix product
        current = ((centres * centres).sum(axis=2)[:, :, None] - 2.0 * products).argmin(axis=1)
        if previous is not None:
            active &= (current != previous).any(axis=1)  # converged: further iterations would give these centres again
            if not active.any():
                break
        labels[active] = current[active]
        previous = current
        members = labels[active][:, None, :] == clusters  # (active runs, k, n)
        mass = members @ weights
        sums = members @ weighted
        filled = mass > 0  # an empty cluster keeps its centre, as kmeans2 does
        updated = centres[active]
        updated[filled] = sums[filled] / mass[filled][:, None]
        centres[active] = updated
    return centres, labels


def _squared_distances(centres: np.ndarray, data: np.ndarray) -> np.ndarray:
    """(..., k, n) squared Euclidean distances from centres (..., k, d), summed over the dimensions in
    order (as scipy's C code does)."""
    diff = data - centres[..., :, None, :]
    squares = diff * diff
    total = squares[..., 0].copy()
    for d in range(1, data.shape[1]):
        total += squares[..., d]
    return total


def lab_to_hex(lab) -> str:
    """A CIELAB (D65) colour as an sRGB '#rrggbb' for display (out-of-gamut colours clipped)."""
    L, a, b = (float(v) for v in lab)
    fy = (L + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    xyz = np.where(f**3 > _EPSILON, f**3, (116.0 * f - 16.0) / _KAPPA) * _D65_WHITE
    linear = np.clip(np.linalg.solve(_SRGB_TO_XYZ, xyz), 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return "#" + "".join(f"{round(float(v) * 255):02x}" for v in np.clip(srgb, 0.0, 1.0))


def lab_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 delta E: Euclidean distance in CIELAB (broadcasts over leading axes)."""
    return np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=-1)
