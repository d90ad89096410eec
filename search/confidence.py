"""How sure is the top answer? A calibrated probability that the first product is right.

A photo of a product that is not in the catalogue still gets a top-1, so
the score alone says little. The signals, for the first product:

- `top`: its score, and `margin`: how far it leads the second;
- `views_agree`: the share of the photo's views (whole, centre, cut-out) whose
  own nearest product it is: a right answer is seen the same from each view;
- `encoders_agree`: mean over the encoders of 1 / its rank under that encoder
  alone: a right answer tends to be first for every model of the ensemble;
- `colour_agree`: 1 when its dominant colour equals the photo's, falling to 0
  at `COLOUR_SCALE` delta E.

A logistic regression turns them into a probability, fitted on labelled
photos: each photo once as it is (right or wrong top-1), once with its true
products hidden (the "not in catalogue" case, always wrong), and every photo
staff marked "not in the catalogue". `search eval --calibrate` (and
`--calibrate --feedback`) fits it by hand and stores it in the collection;
`search serve` refits it on the store's own answers (search/refit.py); until
then the built-in calibration applies (fitted on synthetic store photos of
the sample catalogue with the offline ensemble: a starting point, not a
promise). Calibrations stored before the agreement signals existed use top
and margin only, as they were fitted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from search.rescore import DEFAULT_THRESHOLD

#: Below this probability `search image` says "no confident match".
DEFAULT_MIN_CONFIDENCE = 0.5
#: delta E at which colour agreement reaches 0: the default colour threshold, so it does not move with a sweep.
COLOUR_SCALE = DEFAULT_THRESHOLD
SIGNALS = ("top", "margin", "views_agree", "encoders_agree", "colour_agree")
#: Where a calibration comes from (`Calibration.kind`): shipped with the code, fitted by `search eval
#: --calibrate`, or refitted by `search serve` on the store's own answers.
BUILT_IN_KIND, BY_HAND, STORE_ANSWERS = "built-in", "search-eval", "refit"
KINDS = {
    BUILT_IN_KIND: "built-in (synthetic photos)",
    BY_HAND: "fitted by hand (search eval --calibrate)",
    STORE_ANSWERS: "fitted on the store's answers",
}


@dataclass(frozen=True)
class Evidence:
    """What one search saw beyond the scores: each view's and each encoder's own order of products."""

    views: list[list[str]] = field(default_factory=list)  # per view of the photo: products, nearest first
    encoders: list[list[str]] = field(default_factory=list)  # per encoder alone: products, nearest first

    def views_agree(self, product: str, hidden: frozenset[str] = frozenset()) -> float:
        if not self.views:
            return 0.0
        return sum(_first(order, hidden) == product for order in self.views) / len(self.views)

    def encoders_agree(self, product: str, hidden: frozenset[str] = frozenset()) -> float:
        if not self.encoders:
            return 0.0
        return sum(1.0 / _rank(order, product, hidden) for order in self.encoders) / len(self.encoders)


def _first(order: list[str], hidden: frozenset[str]) -> str | None:
    return next((p for p in order if p not in hidden), None)


def _rank(order: list[str], product: str, hidden: frozenset[str]) -> float:
    visible = [p for p in order if p not in hidden]
    return float(visible.index(product) + 1) if product in visible else float(len(visible) + 1)


def signals(ranked: Sequence, evidence: Evidence | None = None, hidden: Iterable[str] = ()) -> dict[str, float] | None:
    """The signals of the first product of `ranked` (Match-like rows, best first) once `hidden` products
    are left out; None when nothing is left."""
    hidden = frozenset(hidden)
    rows = [m for m in ranked if m.product_id not in hidden][:2]
    if not rows:
        return None
    top = rows[0]
    second = rows[1].score if len(rows) > 1 else 0.0
    found = {"top": float(top.score), "margin": float(top.score - second)}
    if evidence is not None:
        found["views_agree"] = evidence.views_agree(top.product_id, hidden)
        found["encoders_agree"] = evidence.encoders_agree(top.product_id, hidden)
    distance = getattr(top, "colour_distance", None)
    found["colour_agree"] = 0.0 if distance is None else max(0.0, 1.0 - float(distance) / COLOUR_SCALE)
    return found


@dataclass(frozen=True)
class Calibration:
    weights: Mapping[str, float]  # signal name -> weight; signals absent from a search count as 0
    bias: float
    source: str  # where the fit came from, shown to users
    samples: int
    kind: str = BY_HAND  # one of KINDS
    figures: Mapping = field(default_factory=dict)  # how it scored when it was fitted (refits: leave-one-photo-out AUC...)

    def confidence(self, found: Mapping[str, float] | None) -> float | None:
        """Probability that the first product is the right one, from its signals."""
        if not found:
            return None
        z = self.bias + sum(weight * found.get(name, 0.0) for name, weight in self.weights.items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    @property
    def uses_agreement(self) -> bool:
        """Whether it weighs the views' or the encoders' agreement (which cost a search a vector fetch)."""
        return any(self.weights.get(name) for name in ("views_agree", "encoders_agree"))

    @property
    def fits_store(self) -> bool:
        """Whether it was fitted for this collection (by hand or on its answers), not shipped with the code."""
        return self.kind != BUILT_IN_KIND

    def to_metadata(self) -> dict:
        return {
            "weights": dict(self.weights),
            "bias": self.bias,
            "source": self.source,
            "samples": self.samples,
            "kind": self.kind,
            "figures": dict(self.figures),
        }

    @classmethod
    def from_metadata(cls, data: dict | None) -> Calibration:
        if not data:
            return BUILT_IN
        if "weights" in data:
            weights = {str(k): float(v) for k, v in data["weights"].items()}
        else:  # stored before the agreement signals: top and margin
            weights = {"top": float(data["weight_top"]), "margin": float(data["weight_margin"])}
        kind = str(data.get("kind") or BY_HAND)  # stored before kinds existed: by `search eval --calibrate`
        return cls(weights, float(data["bias"]), str(data["source"]), int(data["samples"]), kind, dict(data.get("figures") or {}))


#: The signal sets a calibration chooses from: score and margin, each agreement signal added, all.
SIGNAL_SETS = (("top", "margin"), *(("top", "margin", extra) for extra in SIGNALS[2:]), SIGNALS)
#: Folds of the cross-validation that chooses the set; photos never straddle two folds.
FOLDS = 5


def fit(
    samples: Sequence[tuple[Mapping[str, float], bool]],
    source: str,
    names: Sequence[str] | None = None,
    groups: Sequence[int] | None = None,
) -> tuple[Calibration, dict]:
    """Logistic regression from (signals, top-1 was right) pairs; also returns its quality.

    `names` fixes the signals; without them the set of SIGNAL_SETS with the best cross-validated
    AUC is chosen (the fewest signals on a tie): the agreement signals earn their place on the
    photos at hand, or stay out. `groups` says which photo each sample comes from (a photo's
    answers as it is and with its product hidden), so that no photo is in a fold's fit and its test.
    """
    from sklearn.metrics import roc_auc_score

    y = np.array([bool(right) for _, right in samples])
    if y.all() or not y.any():
        raise ValueError("calibration needs both right and wrong answers among the photos")
    chosen, scores = (tuple(names), {}) if names else _choose(samples, groups)
    calibration = _fit(samples, chosen, source)
    predicted = np.array([calibration.confidence(found) for found, _ in samples])
    quality = {
        "samples": len(samples),
        "right": int(y.sum()),
        "signals": list(chosen),
        "auc": round(float(roc_auc_score(y, predicted)), 4),
        "accuracy_at_threshold": round(float(((predicted >= DEFAULT_MIN_CONFIDENCE) == y).mean()), 4),
    }
    if scores:
        quality["cross_validated_auc"] = {", ".join(k): v for k, v in scores.items()}
    return calibration, quality


#: Beyond this many photos, `held_out` leaves out one of this many folds of whole photos at a time, not one photo.
HELD_OUT_FOLDS = 100


def held_out(
    samples: Sequence[tuple[Mapping[str, float], bool]], groups: Sequence[int], names: Sequence[str] | None = None
) -> list[float]:
    """Each answer's confidence from a `fit` (its choice of signals included) on every other photo's
    answers: what a calibration says of photos it was not fitted on (`names` fixes the signals). Past HELD_OUT_FOLDS photos, a
    fold of photos is left out at a time, so the cost stops growing. Raises ValueError when a fit
    without some photos lacks right or wrong answers."""
    photos = sorted(set(groups))
    fold = {photo: n % HELD_OUT_FOLDS for n, photo in enumerate(photos)}
    predicted = [0.0] * len(samples)
    for left_out in sorted(set(fold.values())):
        others = [i for i, group in enumerate(groups) if fold[group] != left_out]
        calibration, _ = fit([samples[i] for i in others], "held out", names, groups=[groups[i] for i in others])
        for i, group in enumerate(groups):
            if fold[group] == left_out:
                predicted[i] = calibration.confidence(samples[i][0])
    return predicted


def _fit(samples, names: Sequence[str], source: str) -> Calibration:
    from sklearn.linear_model import LogisticRegression

    x = np.array([[found.get(name, 0.0) for name in names] for found, _ in samples], dtype=np.float64)
    y = np.array([bool(right) for _, right in samples])
    # Fit on standardised signals (margins are hundredths, scores tenths, agreements 0..1: one
    # regularisation strength then suits all), then fold the scaling back into plain weights.
    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    model = LogisticRegression(C=1.0).fit((x - mean) / scale, y)
    weights = model.coef_[0] / scale
    return Calibration(
        weights={name: round(float(w), 6) for name, w in zip(names, weights)},
        bias=round(float(model.intercept_[0] - (weights * mean).sum()), 6),
        source=source,
        samples=len(samples),
    )


def _choose(samples, groups) -> tuple[tuple[str, ...], dict]:
    """The signal set with the best AUC over grouped folds (answers of one photo stay together)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    y = np.array([bool(right) for _, right in samples])
    groups = np.arange(len(samples)) if groups is None else np.asarray(groups)
    folds = min(FOLDS, len(set(groups.tolist())))
    scores: dict[tuple[str, ...], float] = {}
    for names in SIGNAL_SETS:
        predicted = np.zeros(len(samples))
        try:
            for train, test in GroupKFold(n_splits=folds).split(samples, y, groups):
                calibration = _fit([samples[i] for i in train], names, "fold")
                predicted[test] = [calibration.confidence(samples[i][0]) for i in test]
        except ValueError:  # a fold with one class only: too few photos to compare sets
            return SIGNAL_SETS[0], {}
        scores[names] = round(float(roc_auc_score(y, predicted)), 4)
    best = max(scores.values())
    return next(names for names in SIGNAL_SETS if scores[names] == best), scores


#: Fitted by `search eval --calibrate` on 600 answers: 300 photos from `search synthesize
#: ../shared/data/dam --count 300 --seed 0`, each as it is and with its product hidden, searched
#: with the default pipeline and the offline ensemble. A collection's own calibration replaces it.
BUILT_IN = Calibration(
    weights={"top": 7.4815, "margin": 41.9919},
    bias=-7.6030,
    source="built-in (300 synthetic photos of the sample catalogue, offline ensemble)",
    samples=600,
    kind=BUILT_IN_KIND,
)
