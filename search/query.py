"""Name the product(s) in a photo: locate, embed, fetch nearest catalogue images, re-score by colour,
one row per product, one group per located product.

Every caller ranks through one function, `Searcher.rankings`, so `search image`,
`search serve`, store views and `search eval` cannot drift apart:

    features = searcher.features(image)               # localise + model + colour, the slow part
    ranking, = searcher.rankings(features[0], [options])   # candidates, re-scoring, evidence, confidence
    ranking.group()                                    # what `search image` shows

Evaluation embeds each photo once and passes several options (its ablation and
sweep): the candidates are fetched once and re-ranked under each.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.colour import Palette, extract_palette, lab_distance, lab_to_hex
from indexer.encoders import Encoder, l2_normalise, load_encoder, parse_models
from indexer.errors import BadInputError, OptionError
from indexer.feedback import FeedbackLog
from indexer.images import load_rgb
from indexer.store import Catalogue, Filters, Hit, ModelSpec
from indexer.store.schema import CATALOGUE_SOURCE, CATEGORY, PATH, PRODUCT_ID, SOURCE
from search.confidence import Calibration, Evidence, signals
from search.locate import Localiser, Region
from search.options import SearchOptions
from search.rescore import colour_bonus

if TYPE_CHECKING:
    from PIL import Image

#: Query photos decode reduced down to this short side (`indexer.images.load_rgb`).
QUERY_DECODE_SIDE = 768
LOCALISERS = ("centre", "none", "proposals", "owlv2")
#: Candidate points whose stored vectors each view of the photo is compared with (the agreement signal).
EVIDENCE_POINTS = 50


@dataclass(frozen=True)
class QueryFeatures:
    """What a located product is matched with."""

    region: Region
    vectors: list[np.ndarray]  # per encoder: the normalised mean of the region's view vectors
    palette: Palette
    category: str | None = None  # set when the localiser knows the product's category
    view_vectors: list[np.ndarray] | None = None  # per encoder: (views, dim), each view's own vector


@dataclass(frozen=True)
class Candidate:
    """A catalogue image near the query: its cosine and what ranking needs of its payload."""

    point_id: str
    product_id: str
    path: str
    cosine: float
    dominant_lab: np.ndarray | None
    category: str | None = None
    source: str = CATALOGUE_SOURCE  # "store": a store photo staff confirmed as this product
    encoder_cosines: tuple[float, ...] = ()  # the cosine under each encoder alone


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
    point_id: str | None = None  # the reference image's point (GET /v1/images/POINT_ID serves it)
    colour: np.ndarray | None = None  # the reference image's dominant colour, CIELAB
    source: str = CATALOGUE_SOURCE  # which reference won: a catalogue image, or a store view ("store")

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
            "point_id": self.point_id,
            "source": self.source,
            "colour": None
            if self.colour is None
            else {
                "L": round(float(self.colour[0]), 2),
                "a": round(float(self.colour[1]), 2),
                "b": round(float(self.colour[2]), 2),
                "hex": lab_to_hex(self.colour),
            },
        }


@dataclass
class Group:
    """The ranked products for one located product, and how sure the first one is."""

    region: Region | None  # None for a text query
    matches: list[Match]
    confidence: float | None = None
    confident: bool = True

    def to_dict(self) -> dict:
        return {
            "box": None if self.region is None else list(self.region.box),
            "label": None if self.region is None else self.region.label,
            "region_score": None if self.region is None else round(self.region.score, 4),
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "confident": self.confident,
            "matches": [m.to_dict() for m in self.matches],
        }


@dataclass
class SearchResult:
    query: str
    groups: list[Group]
    timings: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # the photo as decoded (upright): what the boxes refer to
    calibrated_for_store: bool = False  # the confidence comes from a calibration fitted for this collection

    @property
    def matches(self) -> list[Match]:
        """The first (most likely) located product's ranking."""
        return self.groups[0].matches if self.groups else []

    def to_dict(self) -> dict:
        first = self.groups[0] if self.groups else None
        return {
            "query": self.query,
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "confidence": None if first is None or first.confidence is None else round(first.confidence, 4),
            "confident": bool(first and first.confident),
            "calibrated_for_store": self.calibrated_for_store,
            "matches": [m.to_dict() for m in self.matches],
            "groups": [g.to_dict() for g in self.groups],
            "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class Ranking:
    """One located product ranked under one SearchOptions: what `search image` shows of it and what
    `search eval` measures of it, from the same candidates."""

    features: QueryFeatures
    options: SearchOptions
    matches: list[Match]  # every product among the candidates, best first
    confidence: float | None
    beyond: list[Candidate]  # points past the candidates, nearest first: only for `rankings(every_point=True)`
    found_evidence: Callable[[], Evidence]  # fetched on first use, once for all the options of one call

    @property
    def evidence(self) -> Evidence:
        return self.found_evidence()

    def group(self) -> Group:
        """The located product's group as a search answers it: its top-k, and how sure the first is."""
        confident = self.confidence is not None and self.confidence >= self.options.min_confidence
        return Group(self.features.region, self.matches[: self.options.top_k], confidence=self.confidence, confident=confident)

    def signals(self, hidden: Collection[str] = ()) -> dict[str, float] | None:
        """The confidence's signals (the agreement ones included) for the first product once `hidden`
        products are left out: "not in the catalogue" is a photo whose products are hidden."""
        return signals(self.matches, self.evidence, hidden)

    def rank_of(self, products: Collection[str]) -> int | None:
        """Rank of the first of `products` in what a user would page through: the ranked candidates,
        then every other product by cosine (as far as `beyond` reaches)."""
        order = [m.product_id for m in self.matches]
        seen = set(order)
        for candidate in self.beyond:
            if candidate.product_id not in seen:
                seen.add(candidate.product_id)
                order.append(candidate.product_id)
        return next((i + 1 for i, product in enumerate(order) if product in products), None)


class Searcher:
    """Searches one collection with the model(s) it was built with."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        model: str | None = None,
        device: str = "auto",
        localiser: str | Localiser = "centre",
        encoder_loader: Callable[..., Encoder] = load_encoder,
        detector_options: dict | None = None,
        runtime: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
    ):
        if not catalogue.exists():
            raise BadInputError(
                f"no collection '{catalogue.name}' in this store; index a catalogue first: indexer sync DAM_FOLDER"
            )
        recorded = catalogue.models()
        wanted = parse_models(model) if model else [m.model for m in recorded]
        catalogue.check_models(wanted)
        self.catalogue = catalogue
        self.specs: list[ModelSpec] = recorded
        metadata = catalogue.record()
        self.root = metadata.get("root")
        # Where store views' photos are (their `path` is relative to it); nothing is opened here.
        self.views_root = str(FeedbackLog.of(catalogue.store, catalogue.name).folder)
        self.calibration = Calibration.from_metadata(metadata.get("calibration"))
        self.encoders = [
            encoder_loader(spec.model, device=device, runtime=runtime, dtype=dtype, cache_dir=cache_dir) for spec in recorded
        ]
        catalogue.check_models(wanted, loaded=[e.spec for e in self.encoders])
        self.images = catalogue.count()  # opens the collection now: the first search pays only for itself
        self._device = device
        self._detector_options = detector_options or {}
        self._localisers: dict[str, Localiser] = {}
        self.localiser = localiser if isinstance(localiser, Localiser) else self.localiser_named(localiser)

    def localiser_named(self, name: str) -> Localiser:
        """The localiser called `name` (built once; the OWLv2 detector loads its model on first use)."""
        from search import locate

        if name not in self._localisers:
            if name == "centre":
                self._localisers[name] = locate.CentreViews()
            elif name == "none":
                self._localisers[name] = locate.WholePhoto()
            elif name == "proposals":
                self._localisers[name] = locate.CropProposals(
                    self._productness, max_regions=self._detector_options.get("max_regions", 5)
                )
            elif name == "owlv2":
                from indexer.encoders import resolve_device
                from search.detect import OwlDetector

                options = {k: v for k, v in self._detector_options.items() if k != "max_regions"}
                self._localisers[name] = OwlDetector(
                    device=resolve_device(self._device), max_regions=self._detector_options.get("max_regions", 5), **options
                )
            else:
                raise OptionError(f"locate {name!r}: choose one of {', '.join(LOCALISERS)}")
        return self._localisers[name]

    # -- features -------------------------------------------------------------

    def features(
        self, image: Image.Image, timings: dict[str, float] | None = None, localiser: Localiser | None = None
    ) -> list[QueryFeatures]:
        """One QueryFeatures per located product, most likely first; stage times are added to `timings`."""
        from search.foreground import on_white, product_mask

        localiser = localiser or self.localiser
        timings = timings if timings is not None else {}
        for stage in ("locate", "cutout", "embed", "colour"):
            timings.setdefault(stage, 0.0)
        t = time.perf_counter()
        regions = localiser.locate(image)
        timings["locate"] = time.perf_counter() - t
        found = []
        for region in regions:
            t0 = time.perf_counter()
            crop = image.crop(region.box)
            views = [image.crop(box) for box in region.views]
            mask = None
            if region.cutout:
                mask = product_mask(crop)
                views.append(on_white(crop, mask))
            t1 = time.perf_counter()
            per_view = self._embed_all(views)
            vectors = [l2_normalise(found.mean(axis=0)) for found in per_view]
            t2 = time.perf_counter()
            palette = extract_palette(crop, mask=mask) if mask is not None else extract_palette(image)
            t3 = time.perf_counter()
            timings["cutout"] += t1 - t0
            timings["embed"] += t2 - t1
            timings["colour"] += t3 - t2
            category = localiser.category_of(region.label)
            found.append(QueryFeatures(region=region, vectors=vectors, palette=palette, category=category, view_vectors=per_view))
        return found

    def _embed_all(self, views: list) -> list[np.ndarray]:
        """Every encoder's vectors for the views; encoders that can run in the background (the service's
        batching ones) all run at once, each on its own thread."""
        pending = [encoder.submit(views) if hasattr(encoder, "submit") else None for encoder in self.encoders]
        return [job.result() if job is not None else encoder.embed(views) for encoder, job in zip(self.encoders, pending)]

    def _productness(self, crops: list[Image.Image]) -> np.ndarray:
        """Mean cosine of each crop's ten nearest catalogue images: high for products, low for walls."""
        vectors = self.encoders[0].embed(crops)
        found = self.catalogue.nearest_batch(list(vectors), self.specs[0].vector, 10)
        return np.array([np.mean([hit.score for hit in hits]) if hits else 0.0 for hits in found])

    # -- candidates and ranking ------------------------------------------------

    def candidates(self, features: QueryFeatures, limit: int, filters: Filters = ()) -> list[Candidate]:
        """The `limit` nearest catalogue images by cosine (the mean over encoders when there are several), best first.

        With several encoders, each one's nearest are fetched, deeper until no point missing from every
        list could still rank among the `limit` best (its cosine under each encoder is at most that
        encoder's last one fetched): the answer is the nearest over every point, not an approximation.
        """
        if features.category:
            filters = (*filters, (CATEGORY, features.category))
        depth = limit
        while True:
            found, complete = self._fused_nearest(features, depth, filters)
            if complete is None or (len(found) >= limit and found[limit - 1].cosine > complete):
                return found[:limit]
            depth *= 4

    def _fused_nearest(self, features: QueryFeatures, depth: int, filters: Filters) -> tuple[list[Candidate], float | None]:
        """Each encoder's `depth` nearest points, every one scored by the mean cosine over all encoders (a point
        missed by some encoder gets that encoder's cosine from its stored vector), best first; and the best mean
        a point missed by every encoder could have (None: no such point, every list reached its end)."""
        scores: dict[str, dict[int, float]] = {}
        hits: dict[str, Hit] = {}
        floors = []
        for i, (spec, vector) in enumerate(zip(self.specs, features.vectors)):
            nearest = self.catalogue.nearest(vector, spec.vector, depth, filters)
            for hit in nearest:
                scores.setdefault(hit.id, {})[i] = hit.score
                hits.setdefault(hit.id, hit)
            floors.append(nearest[-1].score if len(nearest) == depth else None)
        incomplete = [pid for pid, by_encoder in scores.items() if len(by_encoder) < len(self.specs)]
        if incomplete:
            stored = self.catalogue.vectors(incomplete, [s.vector for s in self.specs])
            for pid, by_name in stored.items():
                for i, (spec, vector) in enumerate(zip(self.specs, features.vectors)):
                    scores[pid].setdefault(i, float(np.dot(by_name[spec.vector], vector)))
        found = [
            _candidate(hits[pid], float(np.mean(list(by_encoder.values()))), tuple(by_encoder[i] for i in range(len(self.specs))))
            for pid, by_encoder in scores.items()
        ]
        found.sort(key=lambda c: (-c.cosine, c.product_id, c.path))  # ties (identical photos) in a fixed order
        exhausted = len(self.specs) == 1 or any(floor is None for floor in floors)
        return found, None if exhausted else float(np.mean(floors))

    def evidence(self, features: QueryFeatures, found: list[Candidate]) -> Evidence:
        """Each view's and each encoder's own order of the candidate products (the confidence's agreement
        signals): views are scored against the stored vectors of the nearest `EVIDENCE_POINTS` candidates."""
        encoders = []
        for i in range(len(self.specs)):
            best: dict[str, float] = {}
            for c in found:
                if c.encoder_cosines:
                    best[c.product_id] = max(best.get(c.product_id, -2.0), c.encoder_cosines[i])
            encoders.append(sorted(best, key=lambda p: (-best[p], p)))
        views: list[list[str]] = []
        nearest = found[:EVIDENCE_POINTS]
        if features.view_vectors is not None and nearest:
            stored = self.catalogue.vectors([c.point_id for c in nearest], [s.vector for s in self.specs])
            kept = [c for c in nearest if c.point_id in stored]
            if kept:
                # (views, points): each view's cosine to each point, the mean over encoders.
                cosines = np.mean(
                    [
                        view_vectors @ np.stack([stored[c.point_id][spec.vector] for c in kept]).T
                        for spec, view_vectors in zip(self.specs, features.view_vectors)
                    ],
                    axis=0,
                )
                for row in cosines:
                    best = {}
                    for c, cosine in zip(kept, row):
                        best[c.product_id] = max(best.get(c.product_id, -2.0), float(cosine))
                    views.append(sorted(best, key=lambda p: (-best[p], p)))
        return Evidence(views=views, encoders=encoders)

    def rankings(
        self,
        features: QueryFeatures,
        settings: Sequence[SearchOptions],
        *,
        leave_out: Filters = (),
        every_point: bool = False,
        timings: dict[str, float] | None = None,
    ) -> list[Ranking]:
        """The one way a located product is ranked: candidates, colour re-scoring, one row per product,
        evidence, confidence; one Ranking per SearchOptions of `settings`, from one candidate fetch.

        The settings share `candidates` and filters (they differ in colour, alpha, threshold).
        `leave_out`: filters of points this search must not see (a photo's own store view).
        `every_point`: fetch every point, so `Ranking.rank_of` reaches past the candidates; the
        candidates are then the nearest by the mean cosine over every point, where a search fuses each
        encoder's nearest (the two differ only for a point that no encoder alone has near).
        `timings` gains the "query" (candidates) and "rank" seconds.
        """
        first = settings[0]
        if any((o.candidates, o.query_filters) != (first.candidates, first.query_filters) for o in settings):
            raise ValueError("rankings: every setting must share candidates and filters")
        timings = timings if timings is not None else {}
        t0 = time.perf_counter()
        filters = (*first.query_filters, *leave_out)
        limit = self.catalogue.count() if every_point else first.candidates
        nearest = self.candidates(features, limit, filters)
        found, beyond = nearest[: first.candidates], nearest[first.candidates :]
        t1 = time.perf_counter()
        evidence = functools.cache(lambda: self.evidence(features, found))
        calibration = self.calibration  # once: a refit may replace it meanwhile
        rankings = []
        for options in settings:
            ranked = rank(found, features.palette, replace(options, top_k=len(found)), root=self.root, views_root=self.views_root)
            found_signals = signals(ranked, evidence() if calibration.uses_agreement else None)
            rankings.append(Ranking(features, options, ranked, calibration.confidence(found_signals), beyond, evidence))
        timings["query"] = timings.get("query", 0.0) + t1 - t0
        timings["rank"] = timings.get("rank", 0.0) + time.perf_counter() - t1
        return rankings

    def search_image(
        self, image: Image.Image, options: SearchOptions, *, query: str = "image", locate: str | None = None
    ) -> SearchResult:
        """Ranked products for each located product in an RGB image already in memory.

        `locate` names another localiser than the searcher's default for this search only.
        Safe to call from several threads at once: nothing here keeps per-search state.
        """
        timings: dict[str, float] = {}
        t = time.perf_counter()
        all_features = self.features(image, timings, self.localiser_named(locate) if locate else None)
        timings["features"] = time.perf_counter() - t
        timings["query"] = timings["rank"] = 0.0
        groups = [self.rankings(features, [options], timings=timings)[0].group() for features in all_features]
        timings["total"] = time.perf_counter() - t
        return SearchResult(
            query=query,
            groups=_distinct_groups(groups),
            timings=timings,
            size=image.size,
            calibrated_for_store=self.calibration.fits_store,
        )

    def text_model(self) -> int | None:
        """Index of the first encoder whose model has a text tower (CLIP family), or None."""
        from indexer.encoders import OFFLINE_MODELS

        return next((i for i, spec in enumerate(self.specs) if spec.model not in OFFLINE_MODELS), None)

    def search_text(self, text: str, options: SearchOptions, text_encoder) -> SearchResult:
        """Products whose catalogue images match `text` (cosine in the CLIP space; no colour, no confidence)."""
        index = self.text_model()
        if index is None:
            raise OptionError(
                f"text search needs a model with a text tower (a CLIP model such as patrickjohncyh/fashion-clip); "
                f"this collection holds {', '.join(s.model for s in self.specs)}"
            )
        t = time.perf_counter()
        vector = text_encoder.embed_texts([text])[0]
        embedded = time.perf_counter() - t
        hits = self.catalogue.nearest(vector, self.specs[index].vector, options.candidates, options.query_filters)
        found = [_candidate(hit, hit.score) for hit in hits]
        found.sort(key=lambda c: (-c.cosine, c.product_id, c.path))
        ranked = rank(found, None, replace(options, colour=False), root=self.root, views_root=self.views_root)
        timings = {"embed": embedded, "query": time.perf_counter() - t - embedded, "total": time.perf_counter() - t}
        return SearchResult(query=text, groups=[Group(None, ranked, confidence=None, confident=False)], timings=timings)

    def search_file(self, path: str | Path, options: SearchOptions, *, locate: str | None = None) -> SearchResult:
        return self.search_bytes_or_path(path, options, query=str(path), locate=locate)

    def search_bytes_or_path(
        self, source: str | Path | bytes, options: SearchOptions, *, query: str, locate: str | None = None
    ) -> SearchResult:
        """Decode a photo (a path or the bytes of an upload) and search it, timing the decode too."""
        t0 = time.perf_counter()
        image = load_rgb(source, name=query, draft=QUERY_DECODE_SIDE)
        decoded = time.perf_counter() - t0
        result = self.search_image(image, options, query=query, locate=locate)
        result.timings = {"decode": decoded, **result.timings, "total": time.perf_counter() - t0}
        return result

    def reference_images(self) -> dict[str, str]:
        """Product id -> absolute path of one of its catalogue images (for reports)."""
        images: dict[str, str] = {}
        for image in self.catalogue.indexed_images():
            images.setdefault(image.product_id, str(Path(self.root) / image.path) if self.root else image.path)
        return images


def _candidate(hit: Hit, cosine: float, encoder_cosines: tuple[float, ...] = ()) -> Candidate:
    return Candidate(
        point_id=hit.id,
        product_id=hit.payload.get(PRODUCT_ID, ""),
        path=hit.payload.get(PATH, ""),
        cosine=float(cosine),
        dominant_lab=hit.dominant_lab,
        category=hit.payload.get(CATEGORY),
        source=hit.payload.get(SOURCE) or CATALOGUE_SOURCE,
        encoder_cosines=encoder_cosines,
    )


def rank(
    candidates: list[Candidate],
    palette: Palette | None,
    options: SearchOptions,
    *,
    root: str | None = None,
    views_root: str | None = None,
) -> list[Match]:
    """Colour re-scoring (none without a query palette), then one row per product (its best image), best first.

    `root` (the DAM folder) and `views_root` (the feedback store) make the reference images' absolute paths."""
    scored = []
    for c in candidates:
        distance = (
            float(lab_distance(palette.dominant, c.dominant_lab)) if c.dominant_lab is not None and palette is not None else None
        )
        bonus = (
            float(colour_bonus(distance, options.alpha, options.threshold)) if options.colour and distance is not None else 0.0
        )
        scored.append((c.cosine + bonus, bonus, distance, c))
    scored.sort(key=lambda s: (-s[0], s[3].product_id, s[3].path))
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
            image=_image_path(c, root, views_root),
            category=c.category,
            point_id=c.point_id,
            colour=c.dominant_lab,
            source=c.source,
        )
        for i, (score, bonus, distance, c) in enumerate(rows)
    ]


def _image_path(candidate: Candidate, root: str | None, views_root: str | None) -> str | None:
    if candidate.source == CATALOGUE_SOURCE:
        return str(Path(root) / candidate.path) if root else None
    return str(Path(views_root) / candidate.path) if views_root else None


def _distinct_groups(groups: list[Group]) -> list[Group]:
    """Two boxes on one product (a shoe and its pair) give one group: the first, most likely, stays."""
    kept, seen = [], set()
    for group in groups:
        top = group.matches[0].product_id if group.matches else None
        if top is not None and top in seen:
            continue
        seen.add(top)
        kept.append(group)
    return kept


__all__ = ["Group", "Match", "Ranking", "SearchOptions", "SearchResult", "Searcher", "rank"]
