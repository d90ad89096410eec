"""How sure is the top answer? A calibrated probability that the first product is right.

Two signals: the top product's score and its margin over the second. A
photo of a product that is not in the catalogue still gets a top-1; its
margin is small, because nothing stands out. A logistic regression turns the
two into a probability, fitted on labelled photos: each photo once as it is
(right or wrong top-1) and once with its true products hidden from the
ranking (the "not in catalogue" case, always wrong). `search eval
--calibrate` fits it on your photos and stores it in the collection; until
then the built-in calibration applies (fitted on synthetic store photos of
the sample catalogue with the offline ensemble: a starting point, not a
promise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Below this probability `search image` says "no confident match".
DEFAULT_MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Calibration:
    weight_top: float
    weight_margin: float
    bias: float
    source: str  # where the fit came from, shown to users
    samples: int

    def confidence(self, scores: Sequence[float]) -> float | None:
        """Probability that the first of these ranked product scores is the right product."""
        if not scores:
            return None
        top, margin = signals(scores)
        z = self.weight_top * top + self.weight_margin * margin + self.bias
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_metadata(self) -> dict:
        return {
            "weight_top": self.weight_top,
            "weight_margin": self.weight_margin,
            "bias": self.bias,
            "source": self.source,
            "samples": self.samples,
        }

    @classmethod
    def from_metadata(cls, data: dict | None) -> Calibration:
        if not data:
            return BUILT_IN
        return cls(
            float(data["weight_top"]),
            float(data["weight_margin"]),
            float(data["bias"]),
            str(data["source"]),
            int(data["samples"]),
        )


def signals(scores: Sequence[float]) -> tuple[float, float]:
    """(top score, margin of the top over the second); a lone product has the margin of its score."""
    top = float(scores[0])
    second = float(scores[1]) if len(scores) > 1 else 0.0
    return top, top - second


def fit(samples: Sequence[tuple[Sequence[float], bool]], source: str) -> tuple[Calibration, dict]:
    """Logistic regression from (ranked scores, top-1 was right) pairs; also returns its quality."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.array([signals(scores) for scores, _ in samples])
    y = np.array([bool(right) for _, right in samples])
    if y.all() or not y.any():
        raise ValueError("calibration needs both right and wrong answers among the photos")
    # Fit on standardised signals (margins are hundredths, scores tenths: one regularisation
    # strength then suits both), then fold the scaling back into plain weights.
    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    model = LogisticRegression(C=1.0).fit((x - mean) / scale, y)
    weights = model.coef_[0] / scale
    calibration = Calibration(
        weight_top=float(weights[0]),
        weight_margin=float(weights[1]),
        bias=float(model.intercept_[0] - (weights * mean).sum()),
        source=source,
        samples=len(samples),
    )
    predicted = np.array([calibration.confidence(scores) for scores, _ in samples])
    quality = {
        "samples": len(samples),
        "right": int(y.sum()),
        "auc": round(float(roc_auc_score(y, predicted)), 4),
        "accuracy_at_threshold": round(float(((predicted >= DEFAULT_MIN_CONFIDENCE) == y).mean()), 4),
    }
    return calibration, quality


#: Fitted by `search eval --calibrate` on 600 answers: 300 photos from `search synthesize
#: ../shared/data/dam --count 300 --seed 0`, each as it is and with its product hidden, searched
#: with the default pipeline and the offline ensemble (in-sample AUC 0.89). A collection's own
#: calibration replaces it.
BUILT_IN = Calibration(
    weight_top=7.4815,
    weight_margin=41.9919,
    bias=-7.6030,
    source="built-in (300 synthetic photos of the sample catalogue, offline ensemble)",
    samples=600,
)
