"""Name the product in a photo: embed it, fetch nearest catalogue images, re-score by colour, one row per product.

The steps are separate so evaluation can embed each photo once and re-rank
its candidates under many (alpha, threshold) settings:

    features = searcher.features(image)           # model + colour, the slow part
    candidates = searcher.candidates(features)    # Qdrant cosine query
    matches = rank(candidates, features, ...)     # colour re-scoring + grouping, pure numpy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from indexer.colour import Palette, extract_palette, lab_distance
from indexer.encoders import Encoder, load_encoder, model_id_for
from indexer.errors import BadInputError
from indexer.images import load_rgb
from indexer.store import Catalogue, ModelSpec
from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD, colour_bonus

if TYPE_CHECKING:
    from PIL import Image

#: Query photos decode at reduced JPEG scale down to this short side.
QUERY_DECODE_SIDE = 768


@dataclass(frozen=True)
class SearchOptions:
    top_k: int = 10
    candidates: int = 100
    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    colour: bool = True
    filters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class QueryFeatures:
    vectors: list[np.ndarray]  # one unit vector per encoder
    palette: Palette


@dataclass(frozen=True)
class Candidate:
    """A catalogue image near the query: its cosine and what ranking needs of its payload."""

    point_id: str
    product_id: str
    path: str
    cosine: float
    dominant_lab: np.ndarray | None
    category: str | None = None


@dataclass(frozen=True)
class Match:
    rank: int
    product_id: str
    score: float
    cosine: float
    colour_bonus: float
    colour_distance: float | None
    path: str
    image: str | None  # absolute path of the reference image, when the DAM root is known
    category: str | None = None

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "product_id": self.product_id,
            "score": round(self.score, 6),
            "cosine": round(self.cosine, 6),
            "colour_bonus": round(self.colour_bonus, 6),
            "colour_distance": None if self.colour_distance is None else round(self.colour_distance, 3),
            "path": self.path,
            "image": self.image,
            "category": self.category,
        }


@dataclass
class SearchResult:
    query: str
    matches: list[Match]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "matches": [m.to_dict() for m in self.matches],
            "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()},
        }


class Searcher:
    """Searches one collection with the model(s) it was built with."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        model: str | None = None,
        device: str = "auto",
        encoder_loader: Callable[..., Encoder] = load_encoder,
    ):
        if not catalogue.exists():
            raise BadInputError(
                f"no collection '{catalogue.name}' in this store; index a catalogue first: indexer sync DAM_FOLDER"
            )
        recorded = catalogue.models()
        if model:
            catalogue.check_models([model_id_for(m.strip()) for m in model.split(",")])
        else:
            catalogue.check_models([m.model for m in recorded])
        self.catalogue = catalogue
        self.specs: list[ModelSpec] = recorded
        self.root = catalogue.metadata().get("root")
        self.encoders = [encoder_loader(spec.model, device=device) for spec in recorded]
        catalogue.check_models([m.model for m in recorded], dims=[e.dim for e in self.encoders])

    def features(self, image: "Image.Image") -> QueryFeatures:
        vectors = [encoder.embed([image])[0] for encoder in self.encoders]
        return QueryFeatures(vectors=vectors, palette=extract_palette(image))

    def candidates(self, features: QueryFeatures, limit: int, filters: tuple[tuple[str, str], ...] = ()) -> list[Candidate]:
        """Nearest catalogue images by cosine (averaged over encoders when there are several)."""
        from qdrant_client import models as qm

        query_filter = (
            qm.Filter(must=[qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in filters])
            if filters
            else None
        )
        fields = ["product_id", "path", "category", "colour.dominant"]
        if len(self.specs) == 1:
            points = self.catalogue.client.query_points(
                self.catalogue.name,
                query=features.vectors[0].tolist(),
                using=self.specs[0].vector,
                limit=limit,
                query_filter=query_filter,
                with_payload=fields,
            ).points
            return [_candidate(p, p.score) for p in points]
        # Several encoders: union of each one's neighbours, then the mean cosine over all of them.
        seen: dict = {}
        for spec, vector in zip(self.specs, features.vectors):
            for p in self.catalogue.client.query_points(
                self.catalogue.name,
                query=vector.tolist(),
                using=spec.vector,
                limit=limit,
                query_filter=query_filter,
                with_payload=fields,
                with_vectors=[s.vector for s in self.specs],
            ).points:
                seen.setdefault(p.id, p)
        scored = []
        for p in seen.values():
            cosine = float(np.mean([np.dot(p.vector[s.vector], v) for s, v in zip(self.specs, features.vectors)]))
            scored.append(_candidate(p, cosine))
        scored.sort(key=lambda c: -c.cosine)
        return scored[:limit]

    def reference_images(self) -> dict[str, str]:
        """Product id -> absolute path of one of its catalogue images (for reports)."""
        images: dict[str, str] = {}
        for image in self.catalogue.indexed_images():
            images.setdefault(image.product_id, str(Path(self.root) / image.path) if self.root else image.path)
        return images

    def query_features(self, path: str | Path) -> QueryFeatures:
        """Decode a photo and compute its features, exactly as `search image` does."""
        return self.features(load_rgb(path, draft=QUERY_DECODE_SIDE))

    def search_image(self, image: "Image.Image", options: SearchOptions) -> list[Match]:
        """Ranked products for an RGB image already in memory."""
        features = self.features(image)
        return rank(self.candidates(features, options.candidates, options.filters), features.palette, options, root=self.root)

    def search_file(self, path: str | Path, options: SearchOptions) -> SearchResult:
        import time

        t0 = time.perf_counter()
        features = self.query_features(path)
        t1 = time.perf_counter()
        found = self.candidates(features, options.candidates, options.filters)
        t2 = time.perf_counter()
        matches = rank(found, features.palette, options, root=self.root)
        t3 = time.perf_counter()
        timings = {"features": t1 - t0, "query": t2 - t1, "rank": t3 - t2, "total": t3 - t0}
        return SearchResult(query=str(path), matches=matches, timings=timings)


def _candidate(point, cosine: float) -> Candidate:
    payload = point.payload or {}
    dominant = (payload.get("colour") or {}).get("dominant")
    lab = np.array([dominant["L"], dominant["a"], dominant["b"]], dtype=np.float64) if dominant else None
    return Candidate(
        point_id=str(point.id),
        product_id=payload.get("product_id", ""),
        path=payload.get("path", ""),
        cosine=float(cosine),
        dominant_lab=lab,
        category=payload.get("category"),
    )


def rank(candidates: list[Candidate], palette: Palette, options: SearchOptions, *, root: str | None = None) -> list[Match]:
    """Colour re-scoring, then one row per product (its best image), best first."""
    scored = []
    for c in candidates:
        distance = float(lab_distance(palette.dominant, c.dominant_lab)) if c.dominant_lab is not None else None
        bonus = (
            float(colour_bonus(distance, options.alpha, options.threshold))
            if options.colour and distance is not None
            else 0.0
        )
        scored.append((c.cosine + bonus, bonus, distance, c))
    scored.sort(key=lambda s: -s[0])
    best: dict[str, tuple] = {}
    for entry in scored:
        best.setdefault(entry[3].product_id, entry)
    rows = list(best.values())[: options.top_k]
    return [
        Match(
            rank=i + 1,
            product_id=c.product_id,
            score=score,
            cosine=c.cosine,
            colour_bonus=bonus,
            colour_distance=distance,
            path=c.path,
            image=str(Path(root) / c.path) if root else None,
            category=c.category,
        )
        for i, (score, bonus, distance, c) in enumerate(rows)
    ]
