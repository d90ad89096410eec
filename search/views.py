"""Store views: a store photo that staff confirmed becomes a reference point of its product.

The catalogue shows each product once, in studio light; the store shows it
under store light, at store angles. When an associate confirms (or corrects)
an answer, the photo's query vectors (every encoder, from the same views a
search takes) and its cut-out colour are stored as one more point of the
product, with `source: "store"`. Search ranks products by their best
reference, so the next photo of that product in that store can win through
the view.

Guards against mistakes and poisoning: callers must be authenticated (the
server's feedback key), each product keeps at most `max_views` views (the
newest), a second answer for the same photo replaces the first, and every
entry can be listed and removed. The feedback log (indexer/feedback.py) is
the truth: views can be rebuilt from it whenever the collection is.

An answer is recorded whole or not at all: the store views change while the
log's transaction is open, each change keeping what undoes it, and the log
commits last; a failure at any step (photo, row, view, cap, commit) undoes
the views and rolls the log back, so the caller can say "nothing was
recorded". `restore` repairs whatever still disagrees.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from indexer import settings
from indexer.errors import BadInputError, CatalogueError, StoreUnavailable, first_line
from indexer.feedback import PHOTOS, Feedback, FeedbackLog
from indexer.images import load_rgb
from indexer.store import Catalogue, Point
from indexer.store.schema import (
    CATEGORY,
    COLOUR,
    FEEDBACK,
    NOT_STORE_VIEWS,
    PATH,
    PRODUCT_ID,
    SOURCE,
    STORE_SOURCE,
    view_point_id,
)
from search.options import SearchOptions
from search.query import QUERY_DECODE_SIDE, QueryFeatures, Searcher

log = logging.getLogger("catalogue.feedback")
#: Every payload key a store view has: what is put back when a change is undone.
VIEW_FIELDS = (PRODUCT_ID, PATH, CATEGORY, SOURCE, COLOUR, FEEDBACK)
#: What `restore` reports: entries re-embedded or left out, then each kind of disagreement it repaired.
RESTORED = ("restored", "product_gone", "over_cap", "unreadable")
DISAGREEMENTS = ("views_missing", "views_product_differs", "views_not_in_catalogue", "views_without_entry", "views_left_out")
#: The answer recorded with a confirmation: this many products, best first.
ANSWER_LENGTH = 5
#: Pixels by which a box sent back may differ from the located one (rounding by clients).
BOX_TOLERANCE = 2


def max_views() -> int:
    """Store views kept per product ($CATALOGUE_MAX_STORE_VIEWS); 0 keeps none (feedback is only logged)."""
    return settings.get("max_store_views")


def not_this_photo(sha256: str) -> tuple[tuple[str, str], ...]:
    """Filters that leave out the view made from this photo (a photo's own view would trivially win)."""
    return ((f"!{FEEDBACK}.sha256", sha256),)


def view_path(entry: Feedback) -> str:
    """The `path` payload of an entry's view: its photo, relative to the feedback store's folder."""
    return f"{PHOTOS}/{entry.photo}"


def features_in_box(searcher: Searcher, image, box) -> QueryFeatures:
    """The photo's features exactly as its search computed them: the located product whose box is
    `box` (the page sends the box it was shown), else the first; a box no search located is searched
    on its own. Deterministic, so a view is rebuilt the same from its photo and box."""
    located = searcher.features(image)
    if box is None:
        return located[0]
    for features in located:
        if all(abs(a - b) <= BOX_TOLERANCE for a, b in zip(features.region.box, box)):
            return features
    return searcher.features(image.crop(box))[0]


@dataclass
class Recorded:
    """What one confirmation did."""

    entry: Feedback
    view: str | None  # the store view's point id; None for "not in the catalogue" or with views off
    replaced: Feedback | None  # an earlier answer for the same photo, now overridden
    evicted: list[str]  # point ids of older views dropped by the per-product cap

    def to_dict(self) -> dict:
        return {
            **self.entry.to_dict(),
            "view": self.view,
            "replaced": None if self.replaced is None else self.replaced.to_dict(),
            "evicted_views": self.evicted,
        }


class StoreViews:
    """Confirmations of one collection: its feedback log and the store views derived from it."""

    def __init__(self, catalogue: Catalogue, *, searcher: Searcher | None = None, limit: int | None = None):
        """`searcher` (with the collection's models loaded) is needed to record and restore, not to list or remove."""
        self.catalogue = catalogue
        self.searcher = searcher
        self.log = FeedbackLog.of(catalogue.store, catalogue.name)
        self.limit = max_views() if limit is None else limit
        self._writing = threading.Lock()  # the server records answers from several threads
        try:
            self.log.clean()  # what a crash or a full disk left in the feedback store goes first
        except StoreUnavailable as exc:
            log.warning("feedback store %s not cleaned: %s", self.log.folder, exc)

    def record(
        self,
        data: bytes,
        *,
        name: str,
        product_id: str | None,
        box: tuple[int, int, int, int] | None = None,
        answered: list[str] | None = None,
        origin: str = "cli",
        by: str | None = None,
    ) -> Recorded:
        """Keep a photo with what staff said it shows (`product_id`, or None: not in the catalogue);
        a confirmed product gains the photo as a store view.

        `box` is where the product is (the box the page showed); without it the
        photo is located as a search would. `answered` is what the search had
        said; without it the search is run now and its answer recorded.
        """
        if product_id is not None:
            exists, category = self._in_catalogue(product_id)
            if not exists:
                raise BadInputError(f"product {product_id[:80]!r} has no catalogue image in collection {self.catalogue.name!r}")
        image = load_rgb(data, name=name, draft=QUERY_DECODE_SIDE)
        if box is not None and (box[2] > image.width or box[3] > image.height):
            raise BadInputError(f"box {list(box)} lies outside the {image.width}x{image.height} photo")
        features = features_in_box(self.searcher, image, box)
        if answered is None:
            answered = self._answer(features, hashlib.sha256(data).hexdigest())
        located = box if box is not None else tuple(int(v) for v in features.region.box)
        with self._writing:  # the log and the views change together: the last answer's view is the one kept
            changes = _ViewChanges(self.catalogue)
            try:
                with self.log.adding(
                    data, product_id=product_id, answered=list(answered)[:ANSWER_LENGTH], box=located, origin=origin, by=by
                ) as (entry, replaced):
                    pid = view_point_id(entry.sha256)
                    if product_id is None or self.limit == 0:
                        changes.delete([pid])  # a view from an earlier, contradicted answer goes
                        recorded = Recorded(entry, None, replaced, [])
                    else:
                        evicted = self._over_cap(product_id, pid)
                        changes.upsert([self._point(entry, features, category)])
                        changes.delete(evicted)
                        recorded = Recorded(entry, pid, replaced, evicted)
            except BaseException as exc:
                changes.undo(exc, "recorded")
                raise
            return recorded

    def remove(self, entry_id: int) -> Feedback | None:
        """Undo or prune: the entry, its photo and its view go, all or none; the removed entry, or None."""
        with self._writing:
            changes = _ViewChanges(self.catalogue)
            try:
                with self.log.removing(entry_id) as entry:
                    if entry is not None:
                        changes.delete([view_point_id(entry.sha256)])
            except BaseException as exc:
                changes.undo(exc, "removed")
                raise
            return entry

    def restore(self, progress: Callable[[int], object] | None = None, *, products: Collection[str] | None = None) -> dict:
        """Make the views agree with the log (after --reindex, a new model, or any failure): each entry that
        should be a view (the newest `limit` of each product still in the catalogue) is re-embedded, every
        other view goes. `products`: only those products' entries and views. What was done, by reason:
        entries restored or left out, and each kind of disagreement found."""
        done = dict.fromkeys(RESTORED + DISAGREEMENTS, 0)

        def concerned(product: str | None) -> bool:
            return products is None or product in products

        with self._writing:
            entries = self.log.entries(newest_first=True)
            by_view = {view_point_id(e.sha256): e for e in entries}
            wanted: dict[str, tuple[Feedback, str | None]] = {}  # view: (its entry, its category)
            kept: dict[str, int] = {}
            known: dict[str, tuple[bool, str | None]] = {}  # product: (in the catalogue, category)
            for entry in entries:
                if progress:
                    progress(1)
                product = entry.product_id
                if product is None or not concerned(product):
                    continue
                if product not in known:
                    known[product] = self._in_catalogue(product)
                exists, category = known[product]
                if not exists:
                    done["product_gone"] += 1
                elif kept.get(product, 0) >= self.limit:
                    done["over_cap"] += 1
                else:
                    kept[product] = kept.get(product, 0) + 1
                    wanted[view_point_id(entry.sha256)] = (entry, category)
            views = {pid: payload.get(PRODUCT_ID) for pid, payload in self.catalogue.store_views()}
            stale = []
            for pid, product in views.items():
                entry = by_view.get(pid)
                if not (concerned(product) or (entry is not None and concerned(entry.product_id))):
                    continue
                if entry is None:
                    kind = "views_without_entry"
                elif entry.product_id is None:
                    kind = "views_not_in_catalogue"
                elif product != entry.product_id:
                    kind = "views_product_differs"  # rewritten below when the entry is wanted
                elif pid not in wanted:
                    kind = "views_left_out"
                else:
                    continue
                done[kind] += 1
                if pid not in wanted:
                    stale.append(pid)
            done["views_missing"] = sum(pid not in views for pid in wanted)
            self.catalogue.delete(stale)
            for pid, (entry, category) in wanted.items():
                try:
                    image = load_rgb(entry.photo_path, draft=QUERY_DECODE_SIDE)
                except BadInputError:
                    done["unreadable"] += 1
                    if pid in views and views[pid] != entry.product_id:
                        self.catalogue.delete([pid])  # a wrong view goes even when the right one cannot be made
                    continue
                self.catalogue.upsert([self._point(entry, features_in_box(self.searcher, image, entry.box), category)])
                done["restored"] += 1
        return done

    def listed(self, product_id: str | None = None, limit: int | None = None) -> list[dict]:
        """The newest entries (of one product), each saying whether it is a store view now (the cap or a
        vanished product may have dropped it)."""
        entries = self.log.entries(product_id)[:limit]
        ids = [view_point_id(e.sha256) for e in entries]
        found = self.catalogue.retrieve(ids, (PRODUCT_ID,)) if ids and self.catalogue.exists() else {}
        return [
            {**e.to_dict(), "view": e.product_id is not None and (found.get(pid) or {}).get(PRODUCT_ID) == e.product_id}
            for e, pid in zip(entries, ids)
        ]

    def has_product(self, product_id: str) -> bool:
        """Whether the product has a catalogue image: store views are only ever added to such products."""
        return self.catalogue.has_product(product_id)

    # -- internals ---------------------------------------------------------------------------

    def _answer(self, features: QueryFeatures, sha256: str) -> list[str]:
        """What a search answers for the photo, its own earlier view (if any) left out."""
        options = replace(SearchOptions(), top_k=ANSWER_LENGTH)
        ranking = self.searcher.rankings(features, [options], leave_out=not_this_photo(sha256))[0]
        return [m.product_id for m in ranking.group().matches]

    def _in_catalogue(self, product_id: str) -> tuple[bool, str | None]:
        """(whether the product has a catalogue image, its category), in one look: a view takes the category."""
        for _, payload in self.catalogue.scroll((CATEGORY,), ((PRODUCT_ID, product_id), *NOT_STORE_VIEWS)):
            return True, payload.get(CATEGORY)
        return False, None

    def _point(self, entry: Feedback, features: QueryFeatures, category: str | None) -> Point:
        return Point(
            id=view_point_id(entry.sha256),
            vectors={spec.vector: vector for spec, vector in zip(self.searcher.specs, features.vectors)},
            payload={
                PRODUCT_ID: entry.product_id,
                PATH: view_path(entry),
                CATEGORY: category,
                SOURCE: STORE_SOURCE,
                COLOUR: features.palette.to_payload(),
                FEEDBACK: {"id": entry.id, "sha256": entry.sha256, "created": entry.created},
            },
        )

    def _over_cap(self, product_id: str, new_view: str) -> list[str]:
        """The views of a product that a new one (the newest) pushes over the cap of `limit`."""
        views = sorted(
            (view for view in self.catalogue.store_views(((PRODUCT_ID, product_id),)) if view[0] != new_view),
            key=lambda v: (v[1].get(FEEDBACK) or {}).get("id", 0),
            reverse=True,
        )
        return [pid for pid, _ in views[self.limit - 1 :]]


class _ViewChanges:
    """The store writes of one answer, each kept with what undoes it: the log commits after them, and
    a failure anywhere puts the views back as they were."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        self._undo: list[Callable[[], None]] = []

    def upsert(self, points: list[Point]) -> None:
        before = self._now([p.id for p in points])
        self.catalogue.upsert(points)  # one engine operation: applied whole or not at all
        added = [p.id for p in points if p.id not in {b.id for b in before}]
        self._undo.append(lambda: (self.catalogue.delete(added), self.catalogue.upsert(before)))

    def delete(self, point_ids: list[str]) -> None:
        before = self._now(point_ids)
        if before:  # nothing to delete writes nothing: a full store still takes "not in the catalogue"
            self.catalogue.delete([p.id for p in before])
            self._undo.append(lambda: self.catalogue.upsert(before))

    def undo(self, failure: BaseException, what: str) -> None:
        """Put the views back after `failure`; raise what the caller is told: nothing was `what`."""
        try:
            while self._undo:
                self._undo[-1]()
                self._undo.pop()
        except CatalogueError as exc:
            log.error("store views not put back after a failed answer (%s): %s", first_line(failure), exc)
            raise StoreUnavailable(
                f"nothing was {what} in the feedback log ({first_line(failure)}), but the store views could not be "
                f"put back ({first_line(exc)}): run `indexer feedback restore` once the store is writable"
            ) from None
        if isinstance(failure, StoreUnavailable):
            raise StoreUnavailable(f"nothing was {what}: {failure}") from None

    def _now(self, point_ids: list[str]) -> list[Point]:
        """The points as they are now, vectors and payload, to put back."""
        found = self.catalogue.retrieve(point_ids, VIEW_FIELDS) if point_ids else {}
        if not found:
            return []
        vectors = self.catalogue.vectors(list(found), [m.vector for m in self.catalogue.models()])
        return [Point(pid, vectors[pid], payload) for pid, payload in found.items()]
