"""How well does search name the product? Top-k accuracy, MRR, ranks, per category, over a grid of settings.

Each photo's features are computed once, as `search image` computes them, and
ranked by the function every search ranks with (`Searcher.rankings`), given one
option per setting (colour off, colour on, each alpha x threshold of a sweep):
the candidates are fetched once, so a sweep costs almost nothing beyond the
first setting. Eval adds only what it needs: the photo's own store view left
out, and every point fetched so that a rank can reach past the candidates.

The rank of a photo is the rank of its first correct product in what a user
would page through: the re-scored candidates first, then every other product
by cosine. A photo is correct at k when any of its valid references ranks
within k.
"""

from __future__ import annotations

import csv
import hashlib
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from indexer.errors import BadInputError
from indexer.images import IMAGE_SUFFIXES, load_rgb, read_file
from indexer.store import Filters
from indexer.store.schema import STORE_SOURCE
from search.confidence import DEFAULT_MIN_CONFIDENCE
from search.options import SearchOptions
from search.query import Match, QueryFeatures, Searcher
from search.views import not_this_photo


@dataclass(frozen=True)
class Setting:
    """One way of ranking: colour on or off, alpha, threshold."""

    name: str
    colour: bool
    alpha: float
    threshold: float


@dataclass(frozen=True)
class Query:
    """One labelled photo: a file of a query folder, or a confirmation from the feedback store."""

    name: str
    photo: Path
    references: list[str]  # image paths, file names or product ids; empty: not in the catalogue
    box: tuple[int, int, int, int] | None = None  # where the product is, when known


@dataclass
class QueryResult:
    query: str
    expected: list[str]  # product ids
    category: str | None
    photo: Path | None = None
    ranks: dict[str, int | None] = field(default_factory=dict)  # setting name -> rank of first correct
    top: dict[str, list[Match]] = field(default_factory=dict)  # setting name -> top-k shown
    # setting name -> the confidence signals of the first product as ranked, and with the expected
    # products hidden (what a photo of a product missing from the catalogue would get).
    top_signals: dict[str, dict[str, float]] = field(default_factory=dict)
    hidden_signals: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Evaluation:
    ks: tuple[int, ...]
    settings: list[Setting]
    results: list[QueryResult]
    skipped: list[tuple[str, str]]  # (query, why)
    missing_references: list[tuple[str, str]]  # (query, reference)
    seconds: float
    # Photos of products not in the catalogue (staff said so): setting name -> the signals of their
    # first product, one dict per photo. Every answer for them is wrong: negatives for the confidence.
    absent_signals: list[dict[str, dict[str, float]]] = field(default_factory=list)

    def metrics(self, setting: str) -> dict:
        ranks = [r.ranks[setting] for r in self.results]
        won = sum(1 for r in self.results if r.ranks[setting] == 1 and r.top[setting][0].source == STORE_SOURCE)
        return (
            summarise(ranks, self.ks)
            | self._cosines(setting)
            | {"top1_through_store_view": won, "by_category": self._by_category(setting)}
        )

    def _cosines(self, setting: str) -> dict:
        correct, wrong = [], []
        for r in self.results:
            if r.top.get(setting):
                (correct if r.ranks[setting] == 1 else wrong).append(r.top[setting][0].cosine)
        return {
            "mean_cosine_top1_correct": statistics.fmean(correct) if correct else None,
            "mean_cosine_top1_incorrect": statistics.fmean(wrong) if wrong else None,
        }

    def _by_category(self, setting: str) -> dict:
        groups: dict[str, list] = {}
        for r in self.results:
            if r.category:
                groups.setdefault(r.category, []).append(r.ranks[setting])
        return {name: summarise(ranks, self.ks) for name, ranks in sorted(groups.items())}

    def calibration_samples(self, setting: str) -> list[tuple[dict[str, float], bool]]:
        """(signals, top-1 right) for each photo as it is, with its products hidden (always wrong), and
        for each photo of a product not in the catalogue (always wrong)."""
        return [(found, right) for found, right, _photo in self._answers(setting)]

    def calibration_photos(self, setting: str) -> list[int]:
        """The photo each of `calibration_samples` comes from (its answers stay in one fold)."""
        return [photo for _found, _right, photo in self._answers(setting)]

    def _answers(self, setting: str) -> list[tuple[dict[str, float], bool, int]]:
        answers = []
        for n, r in enumerate(self.results):
            if r.top_signals.get(setting):
                answers.append((r.top_signals[setting], r.ranks[setting] == 1, n))
            if r.hidden_signals.get(setting):
                answers.append((r.hidden_signals[setting], False, n))
        answers += [
            (found[setting], False, len(self.results) + n) for n, found in enumerate(self.absent_signals) if found.get(setting)
        ]
        return answers

    def confidence_quality(self, setting: str, calibration, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> dict | None:
        """How well a calibration separates right answers from wrong and not-in-catalogue ones here,
        and what "no confident match" below `min_confidence` would flag."""
        from sklearn.metrics import roc_auc_score

        samples = self.calibration_samples(setting)
        labels = [right for _, right in samples]
        if all(labels) or not any(labels):
            return None
        predicted = [calibration.confidence(found) for found, _ in samples]
        right = [p for p, y in zip(predicted, labels) if y]
        wrong = [p for p, y in zip(predicted, labels) if not y]
        return {
            "calibration": calibration.source,
            "auc": round(float(roc_auc_score(labels, predicted)), 4),
            "mean_confidence_right": round(float(np.mean(right)), 4),
            "mean_confidence_wrong": round(float(np.mean(wrong)), 4),
            "min_confidence": min_confidence,
            "flagged_right": round(float(np.mean([p < min_confidence for p in right])), 4),
            "flagged_wrong": round(float(np.mean([p < min_confidence for p in wrong])), 4),
        }

    def best(self, candidates: Iterable[Setting]) -> Setting:
        """Highest MRR, then top-1, then top-5...: MRR moves with every rank, so small sets still separate."""

        def key(setting: Setting):
            m = self.metrics(setting.name)
            return (m["mrr"], *(m[f"top{k}"] for k in self.ks))

        return max(candidates, key=key)

    def to_dict(self, top_k: int, shown: tuple[str, ...] = ()) -> dict:
        """Everything, per-query ranks under every setting; top-k lists only for the `shown` settings."""
        return {
            "queries": len(self.results),
            "seconds": round(self.seconds, 2),
            "settings": {
                s.name: {"colour": s.colour, "alpha": s.alpha, "threshold": s.threshold, **self.metrics(s.name)}
                for s in self.settings
            },
            "absent": len(self.absent_signals),
            "per_query": [
                {
                    "query": r.query,
                    "expected": r.expected,
                    "category": r.category,
                    "ranks": r.ranks,
                    "top_signals": {k: _rounded(v) for k, v in r.top_signals.items() if k in shown},
                    "hidden_signals": {k: _rounded(v) for k, v in r.hidden_signals.items() if k in shown},
                    "top": {name: [m.to_dict() for m in matches[:top_k]] for name, matches in r.top.items() if name in shown},
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
            "skipped": [{"query": q, "why": why} for q, why in self.skipped],
            "missing_references": [{"query": q, "reference": ref} for q, ref in self.missing_references],
        }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _rounded(found: dict[str, float] | None) -> dict[str, float] | None:
    return None if found is None else {k: round(v, 6) for k, v in found.items()}


def summarise(ranks: list[int | None], ks: tuple[int, ...]) -> dict:
    """Top-k accuracy, MRR and median rank; None ranks (product not in the catalogue) count as misses."""
    n = len(ranks)
    found = sorted(r for r in ranks if r is not None)
    out: dict = {"n": n}
    for k in ks:
        out[f"top{k}"] = sum(1 for r in found if r <= k) / n if n else 0.0
    out["mrr"] = sum(1.0 / r for r in found) / n if n else 0.0
    out["median_rank"] = statistics.median(found) if found else None
    return out


def read_ground_truth(path: Path) -> dict[str, list[str]]:
    """`query,reference` rows; a query may list several valid references."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: not a readable UTF-8 CSV ({exc})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["query", "reference"]:
        rows = rows[1:]
    truth: dict[str, list[str]] = {}
    for number, row in enumerate(rows, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise BadInputError(f"{path}: line {number}: expected 'query,reference'")
        truth.setdefault(row[0].strip(), []).append(row[1].strip())
    if not truth:
        raise BadInputError(f"{path}: no 'query,reference' rows")
    return truth


class ReferenceIndex:
    """Maps a ground-truth reference (image path, file name, or product id) to a product id."""

    def __init__(self, searcher: Searcher):
        self.by_name: dict[str, str] = {}
        self.products: set[str] = set()
        self.category: dict[str, str] = {}
        for image in searcher.catalogue.indexed_images():
            self.products.add(image.product_id)
            self.by_name[image.path] = image.product_id
            self.by_name.setdefault(image.path.rsplit("/", 1)[-1], image.product_id)
            if image.category:
                self.category.setdefault(image.product_id, image.category)

    def product_for(self, reference: str) -> str | None:
        reference = reference.replace("\\", "/")
        if reference in self.by_name:
            return self.by_name[reference]
        if reference in self.products:
            return reference
        return None


def grid_settings(alphas: Iterable[float], thresholds: Iterable[float]) -> list[Setting]:
    return [Setting(f"alpha={a:g},threshold={t:g}", True, a, t) for a in alphas for t in thresholds]


def query_photos(folder: Path) -> dict[str, Path]:
    """The photos of a query folder by file name (images only, hidden files skipped)."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def folder_queries(queries_dir: Path, truth: dict[str, list[str]]) -> tuple[list[Query], list[tuple[str, str]]]:
    """The photos of a query folder that the ground truth labels; (queries, skipped with why)."""
    if not queries_dir.is_dir():
        raise BadInputError(f"{queries_dir}: no such folder")
    photos = query_photos(queries_dir)
    skipped = [(name, "no ground truth") for name in photos if name not in truth]
    skipped += [(name, "listed in the ground truth, not in the folder") for name in truth if name not in photos]
    return [Query(name, photos[name], truth[name]) for name in photos if name in truth], skipped


def feedback_queries(entries) -> list[Query]:
    """The feedback store's photos as labelled queries (each searched without its own view, as every query is)."""
    return [Query(f"#{e.id} {e.photo[:12]}", e.photo_path, [e.product_id] if e.product_id else [], box=e.box) for e in entries]


def evaluate(
    searcher: Searcher,
    queries: list[Query],
    settings: list[Setting],
    *,
    skipped: list[tuple[str, str]] | None = None,
    candidates: int = 100,
    top_k: int = 10,
    ks: tuple[int, ...] = (1, 5, 10),
    filters: Filters = (),
    progress: Callable[[int], object] | None = None,
    every_point: bool = True,
) -> Evaluation:
    """Each query once through the search pipeline, ranked under every setting. A query without
    references is a photo of a product the catalogue lacks: it only feeds the confidence's negatives.
    `every_point` False: ranks reach no further than the candidates (enough for top-1 and the
    confidence, and no fetch of the whole collection per photo)."""
    started = time.perf_counter()
    references = ReferenceIndex(searcher)
    skipped = list(skipped or [])
    missing: list[tuple[str, str]] = []
    results = []
    absent: list[dict[str, dict[str, float]]] = []
    base = SearchOptions(top_k=top_k, candidates=candidates, filters=filters)
    options = [replace(base, alpha=s.alpha, threshold=s.threshold, colour=s.colour) for s in settings]
    for query in queries:
        expected = _expected(query, references, missing)
        t0 = time.perf_counter()
        try:
            if query.references and not expected:
                raise BadInputError("none of its references is in the collection")
            data = read_file(query.photo, label=query.name)
            # The most likely located product answers for the photo (ground truth names one product).
            features = _features(searcher, data, query)
        except BadInputError as exc:
            skipped.append((query.name, str(exc)))
        else:
            category = references.category.get(expected[0]) if expected else None
            result = QueryResult(query=query.name, expected=expected, category=category, photo=query.photo)
            _rank_query(searcher, result, data, features, settings, options, every_point)
            result.seconds = time.perf_counter() - t0
            if expected:
                results.append(result)
            else:
                absent.append(result.top_signals)
        if progress:
            progress(1)
    if not results:
        raise BadInputError(f"no photo with usable ground truth to evaluate ({len(skipped)} skipped)")
    return Evaluation(ks, settings, results, skipped, missing, time.perf_counter() - started, absent)


def _expected(query: Query, references: ReferenceIndex, missing: list[tuple[str, str]]) -> list[str]:
    """The products the query's references name, in order; references the collection lacks go to `missing`."""
    expected: list[str] = []
    for reference in query.references:
        product = references.product_for(reference)
        if product is None:
            missing.append((query.name, reference))
        elif product not in expected:
            expected.append(product)
    return expected


def _rank_query(
    searcher: Searcher,
    result: QueryResult,
    data: bytes,
    features: QueryFeatures,
    settings: list[Setting],
    options: list[SearchOptions],
    every_point: bool = True,
) -> None:
    """The photo through `Searcher.rankings` under every setting: its ranks, top-k and signals go to `result`."""
    # A photo staff confirmed is in the collection as a store view: leave it out, or it wins by itself.
    own_view = not_this_photo(hashlib.sha256(data).hexdigest())
    rankings = searcher.rankings(features, options, leave_out=own_view, every_point=every_point)
    for setting, ranking in zip(settings, rankings):
        result.top_signals[setting.name] = ranking.signals()
        if result.expected:
            result.ranks[setting.name] = ranking.rank_of(set(result.expected))
            result.top[setting.name] = ranking.matches[: ranking.options.top_k]
            result.hidden_signals[setting.name] = ranking.signals(hidden=result.expected)


def _features(searcher: Searcher, data: bytes, query: Query) -> QueryFeatures:
    """The photo's features as `search image` computes them (within the query's box, when it has one)."""
    from search.query import QUERY_DECODE_SIDE
    from search.views import features_in_box

    return features_in_box(searcher, load_rgb(data, name=query.name, draft=QUERY_DECODE_SIDE), query.box)


@dataclass
class EvalRun:
    """An evaluation as `search eval` reports it: the metrics, which setting is shown, the sweep's best,
    how well the confidence separates right from wrong answers, and a calibration if one was fitted."""

    evaluation: Evaluation
    shown: str
    best: Setting
    confidence: dict | None
    calibrated: dict | None
    options: SearchOptions

    def to_dict(self, searcher: Searcher) -> dict:
        data = self.evaluation.to_dict(self.options.top_k, shown=(self.shown, self.best.name))
        data["best"] = {"setting": self.best.name, "alpha": self.best.alpha, "threshold": self.best.threshold}
        data["collection"] = searcher.catalogue.name
        data["models"] = [s.model for s in searcher.specs]
        data["locate"] = searcher.localiser.name
        data["confidence"] = self.confidence
        data["calibrated"] = self.calibrated
        return data


def run_evaluation(
    searcher: Searcher,
    queries: list[Query],
    options: SearchOptions,
    *,
    ks: tuple[int, ...] = (1, 5, 10),
    sweep: tuple[Iterable[float], Iterable[float]] | None = None,
    calibrate: bool = False,
    skipped: list[tuple[str, str]] | None = None,
    source: str = "labelled photos",
    progress: Callable[[int], object] | None = None,
) -> EvalRun:
    """Evaluate with `options` and, colour off, as the ablation; with `sweep` (alphas, thresholds) every pair
    too. `calibrate` fits the confidence on these photos and stores it in the collection."""
    settings = [Setting("cosine only", False, 0.0, options.threshold)]
    if options.colour:
        settings.append(
            Setting(f"colour alpha={options.alpha:g},threshold={options.threshold:g}", True, options.alpha, options.threshold)
        )
    grid = grid_settings(*sweep) if sweep else []
    settings += [s for s in grid if (s.alpha, s.threshold) != (options.alpha, options.threshold) or not options.colour]
    evaluation = evaluate(
        searcher,
        queries,
        settings,
        skipped=skipped,
        candidates=options.candidates,
        top_k=options.top_k,
        ks=ks,
        filters=options.query_filters,
        progress=progress,
    )
    shown = settings[1].name if options.colour else settings[0].name
    best = evaluation.best([s for s in settings if s.colour] or settings)
    confidence = evaluation.confidence_quality(shown, searcher.calibration, options.min_confidence)
    calibrated = None
    if calibrate:
        from search.confidence import fit

        try:
            calibration, calibrated = fit(
                evaluation.calibration_samples(shown),
                groups=evaluation.calibration_photos(shown),
                source=f"{len(evaluation.results) + len(evaluation.absent_signals)} {source}",
            )
        except ValueError as exc:
            raise BadInputError(f"cannot calibrate on {source}: {exc}") from None
        calibration = replace(calibration, figures={"at": _now(), "auc_in_sample": calibrated["auc"]})
        searcher.catalogue.update_metadata(calibration=calibration.to_metadata())
        calibrated["stored_in"] = searcher.catalogue.name
    return EvalRun(evaluation, shown, best, confidence, calibrated, options)
