"""Dominant colours of a product: foreground pixels, k-means in CIELAB.

CIELAB is used because Euclidean distance there (CIE76 delta E) roughly
follows perceived colour difference: about 2.3 is just noticeable, 10 is
clearly different, 50 is a different colour family. The background is
removed first so a black bag on white is "black", not "white".
"""

from __future__ import annotations

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
SAMPLE_PIXELS = 2000
KMEANS_ITERATIONS = 20


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
    """sRGB (uint8, any shape ending in 3) to CIELAB under D65, the standard pairing."""
    linear = _SRGB_TO_LINEAR[np.asarray(rgb, dtype=np.uint8)]
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
_levels = np.arange(256) / 255.0
_SRGB_TO_LINEAR = np.where(_levels <= 0.04045, _levels / 12.92, ((_levels + 0.055) / 1.055) ** 2.4)
_EPSILON = 216 / 24389
_KAPPA = 24389 / 27


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
    close = np.linalg.norm(lab - backdrop, axis=-1) < BACKGROUND_TOLERANCE
    border_close = np.concatenate([close[0], close[-1], close[1:-1, 0], close[1:-1, -1]])
    if border_close.mean() < MIN_BORDER_SHARE:
        return np.ones(lab.shape[:2], dtype=bool)
    from scipy import ndimage  # only catalogue shots need it: kept off the search path's start-up

    labels, _ = ndimage.label(close)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    backdrop_mask = np.isin(labels, edge_labels[edge_labels > 0])
    foreground = ~backdrop_mask
    if foreground.mean() < MIN_FOREGROUND_SHARE:
        return np.ones(lab.shape[:2], dtype=bool)
    return foreground


def extract_palette(image: Image.Image, k: int = 3, *, mask: np.ndarray | None = None, seed: int = 0) -> Palette:
    """Dominant colours of `image`'s foreground (or of `mask`'s pixels when given).

    A `mask` must match the analysis size; callers that know where the product
    is (a detector box, a segmentation) pass it, studio shots let the backdrop
    detection find it.
    """
    small = image.copy()
    small.thumbnail((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BILINEAR)
    lab = srgb_to_lab(np.asarray(small.convert("RGB")))
    if mask is None:
        mask = foreground_mask(lab)
    elif mask.shape != lab.shape[:2]:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(small.size, Image.Resampling.NEAREST)) > 0
    pixels = lab[mask] if mask.any() else lab.reshape(-1, 3)
    share = float(mask.mean()) if mask.any() else 1.0
    rng = np.random.default_rng(seed)
    if len(pixels) > SAMPLE_PIXELS:
        pixels = pixels[rng.choice(len(pixels), SAMPLE_PIXELS, replace=False)]
    centres, weights = _kmeans(pixels, k, seed)
    order = np.argsort(-weights, kind="stable")
    return Palette(lab=centres[order], weights=weights[order], foreground_share=share)


def _kmeans(pixels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ then 20 Lloyd iterations: scipy's `kmeans2(minit="++")` step for step, in numpy.

    The same random draws (a RandomState seeded alike) and the same updates
    give the same clusters (tests compare the two on real catalogue shots),
    without importing scipy.cluster on the search path: 0.2-0.4 s of a
    `search image` process's start-up. (scikit-learn's KMeans is the same
    algorithm but spends about 7 ms a call on thread pools, four times the
    clustering of 2,000 pixels.)
    """
    if k <= 1 or len(pixels) <= k or np.ptp(pixels, axis=0).max() < 1e-6:
        return pixels.mean(axis=0, keepdims=True), np.ones(1)
    data = np.asarray(pixels, dtype=np.float64)
    rng = np.random.RandomState(seed)
    centres = np.empty((k, data.shape[1]))
    centres[0] = data[rng.randint(0, len(data))]
    for i in range(1, k):
        nearest = _squared_distances(centres[:i], data).min(axis=0)
        cumulative = (nearest / nearest.sum()).cumsum()
        centres[i] = data[np.searchsorted(cumulative, rng.uniform())]
    previous = None
    for _ in range(KMEANS_ITERATIONS):
        labels = _squared_distances(centres, data).argmin(axis=0)
        if previous is not None and np.array_equal(labels, previous):
            break  # converged: every further iteration would give these centres again
        previous = labels
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=data[:, d], minlength=k) for d in range(data.shape[1])], axis=1)
        members = counts > 0  # an empty cluster keeps its centre, as kmeans2 does
        centres[members] = sums[members] / counts[members, None]
    # Weights from the last assignment, as kmeans2 returns them (identical once converged).
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    keep = counts > 0
    return centres[keep], counts[keep] / counts.sum()


def _squared_distances(centres: np.ndarray, data: np.ndarray) -> np.ndarray:
    """(k, n) squared Euclidean distances, summed over the dimensions in order (as scipy's C code does)."""
    diff = data[None, :, :] - centres[:, None, :]
    squares = diff * diff
    total = squares[:, :, 0].copy()
    for d in range(1, data.shape[1]):
        total += squares[:, :, d]
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
