"""Colour re-scoring of nearest neighbours, the rule of the FashionCLIP study:

    sim = cos + alpha * (1 - d / threshold)   if d < threshold
    sim = cos                                 otherwise

where d is the CIE76 distance (Euclidean, CIELAB) between the dominant colours
of the query and of the candidate. Dominant colour against dominant colour
keeps the rule expressible as one Qdrant formula (`formula`, the query the
README gives other services); the full palettes are stored too, so a palette
distance can replace it later.

The defaults are what `search eval --sweep` ranked best on the default
pipeline (located product, offline ensemble), on the real development photos
and the synthetic store photos alike (benchmarks/RESULTS.md). In CIELAB 10 is
a clearly visible difference and 50 another colour family, so within the
threshold the colours read as "the same colour under other light", and the
bonus fades linearly to nothing at it. The full bonus is small next to the
gaps between a clear match and unrelated products, but large enough to
reorder close candidates; larger bonuses lost hits. Sweep your own photos:
store light differs.
"""

from __future__ import annotations

import numpy as np

from indexer.store.schema import DOMINANT_KEYS

DEFAULT_ALPHA = 0.05
DEFAULT_THRESHOLD = 20.0


def colour_bonus(distance: np.ndarray | float, alpha: float, threshold: float) -> np.ndarray:
    """alpha * (1 - d/threshold) where d < threshold, else 0."""
    d = np.asarray(distance, dtype=np.float64)
    if threshold <= 0:
        return np.zeros_like(d)
    return np.where(d < threshold, alpha * (1.0 - d / threshold), 0.0)


def formula(query_lab: np.ndarray, alpha: float, threshold: float) -> dict:
    """The same rule as a Qdrant formula over prefetched candidates (Qdrant >= 1.14), in Qdrant's REST form.

    This is the form the README gives other services (search itself re-scores
    in numpy, `colour_bonus`; tests/edge_formula.py runs this form through the
    embedded engine to prove both rank alike). lin_decay(x) = max(0, 1 -
    (1 - midpoint) * |x - target| / scale), so midpoint 0.5 with scale
    threshold/2 is exactly 1 - d/threshold, cut at zero. (midpoint 0 with
    scale threshold is the same function, but servers before mid-2025 reject
    a midpoint of 0.)
    """
    squares = [{"pow": {"base": {"sum": [key, -float(value)]}, "exponent": 2}} for key, value in zip(DOMINANT_KEYS, query_lab)]
    decay = {"lin_decay": {"x": {"sqrt": {"sum": squares}}, "target": 0.0, "scale": threshold / 2.0, "midpoint": 0.5}}
    return {
        "formula": {"sum": ["$score", {"mult": [float(alpha), decay]}]},
        # A point without colours (not written by this tool) gets no bonus rather than an error.
        "defaults": {key: 1e6 for key in DOMINANT_KEYS},
    }
