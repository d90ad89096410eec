"""The feedback loop, simulated: how much do store views confirmed by staff help the next photo?

    python benchmarks/feedback_loop.py ../shared/data/dam --qdrant-path /tmp/q_ens \
        --dev ../shared/data/store-photos-dev --count 200

Works on copies of the store (the original is not touched). Prints:
  synthetic   two independent synthetic store photos of each of `count` products (`search synthesize`
              with one product seed and two view seeds); the first photo of each is confirmed, and
              top-1/5/10 of the second is measured without and with the store views, in one run;
  dev         the labelled dev photos, each confirmed, then searched leave-one-out (its own view left
              out, `search eval --feedback`), against the same photos without any view; and the dev
              photos searched among the synthetic views (views of *other* products must not pull
              answers away): wrong top-1 answers won by another product's store view are counted;
  latency     search p50/p95 with 0, 1,000 and 10,000 store views in the collection (extra views are
              the confirmed views' vectors with noise, spread over the catalogue's products: the
              engine's cost depends on the number of points, not on what they show);
  confirm     time to record one confirmation (photo kept, encoded, view written).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dam", type=Path)
    parser.add_argument("--qdrant-path", required=True, help="A store synced from DAM (copied, not modified).")
    parser.add_argument("--collection", default="catalogue")
    parser.add_argument("--dev", type=Path, help="Labelled photos with ground_truth.csv (query,reference).")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-views", default="1000,10000", help="Store view counts to time (0 is always timed).")
    parser.add_argument("--latency-queries", type=int, default=40)
    parser.add_argument("--latency-only", action="store_true", help="Only the latency rows (then --count views are real).")
    args = parser.parse_args()

    from indexer.store import open_store
    from search.evaluate import Setting, evaluate, feedback_queries, folder_queries, read_ground_truth
    from search.query import Searcher
    from search.synthetic import write_synthetic_queries

    work = Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    try:
        first, second = work / "first", work / "second"
        t = time.perf_counter()
        write_synthetic_queries(args.dam, first, count=args.count, seed=args.seed, view_seed=1)
        write_synthetic_queries(args.dam, second, count=args.count, seed=args.seed, view_seed=2)
        print(f"synthesized 2 x {args.count} photos in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD

        settings = [Setting("colour", True, DEFAULT_ALPHA, DEFAULT_THRESHOLD)]

        def measure(searcher, queries, skipped=(), filters=()):
            """Metrics, and per photo (by content hash): was its top-1 right, did a store view win it."""
            evaluation = evaluate(searcher, queries, settings, skipped=list(skipped), filters=filters)
            answers = {
                hashlib.sha256(Path(r.photo).read_bytes()).hexdigest(): (r.ranks["colour"] == 1, r.top["colour"][0].source)
                for r in evaluation.results
            }
            return evaluation.metrics("colour"), answers

        def row(label, m, answers, before=None):
            """`before`: the same photos without views; then also the photos right before and now won by
            another product's store view (what a view must not do more often than the catalogue did)."""
            wrong_via_view = sum(1 for right, source in answers.values() if not right and source == "store")
            lost = (
                ""
                if before is None
                else f"  right before, lost to another's view {sum(1 for h, (right, source) in answers.items() if before.get(h, (False,))[0] and not right and source == 'store'):2d}"
            )
            print(
                f"  {label:<44} {m['top1']:6.1%} {m['top5']:6.1%} {m['top10']:6.1%}  MRR {m['mrr']:.3f}  "
                f"right via a view {m['top1_through_store_view']:3d}  wrong via another's view {wrong_via_view:3d}{lost}  (n={m['n']})"
            )
            return answers

        # -- synthetic: confirm the first photo of each product, search the second ------------------
        store = copy_store(args.qdrant_path, work / "synthetic-store")
        with open_store(path=store) as opened:
            catalogue = opened.collection(args.collection)
            searcher = Searcher(catalogue)
            second_queries, second_skipped = folder_queries(second, read_ground_truth(second / "ground_truth.csv"))
            photos = [q.photo for q in second_queries][: args.latency_queries]
            if not args.latency_only:
                print(f"\nsynthetic: {args.count} products, second photo searched ({len(searcher.specs)} encoder(s))")
                print(f"  {'':<44} {'top-1':>6} {'top-5':>6} {'top-10':>6}")
                baseline = row("catalogue only", *measure(searcher, second_queries, second_skipped))
            latencies = [latency(searcher, photos)]
            confirm_seconds = confirm_folder(searcher, first)
            if not args.latency_only:
                row("with the first photos as store views", *measure(searcher, second_queries, second_skipped), baseline)
            if args.dev and not args.latency_only:
                dev_queries, dev_skipped = folder_queries(args.dev, read_ground_truth(args.dev / "ground_truth.csv"))
                print(f"\ndev photos among {args.count} synthetic store views of other products:")

                from search.options import SearchOptions

                catalogue_only = SearchOptions(store_views=False).query_filters
                baseline = row("catalogue only", *measure(searcher, dev_queries, dev_skipped, catalogue_only))
                row("with the synthetic views", *measure(searcher, dev_queries, dev_skipped), baseline)
            rng = np.random.default_rng(0)
            for size in [int(v) for v in args.latency_views.split(",") if int(v) > 0]:
                top_up(searcher, size, rng)
                latencies.append(latency(searcher, photos))
            print(f"\nlatency: search image in-process, {len(photos)} synthetic photos (p50 / p95)")
            print("\n".join(latencies))
        print(
            f"\nconfirm: {statistics.median(confirm_seconds) * 1000:.0f} ms median per confirmation "
            f"(p95 {np.percentile(confirm_seconds, 95) * 1000:.0f} ms, {len(confirm_seconds)} photos)"
        )

        # -- dev: leave-one-out on the labelled photos -----------------------------------------------
        if args.dev and not args.latency_only:
            store = copy_store(args.qdrant_path, work / "dev-store")
            with open_store(path=store) as opened:
                catalogue = opened.collection(args.collection)
                searcher = Searcher(catalogue)
                dev_queries, dev_skipped = folder_queries(args.dev, read_ground_truth(args.dev / "ground_truth.csv"))
                print("\ndev photos, leave-one-out (each confirmed; searched without its own view)")
                baseline = row("catalogue only", *measure(searcher, dev_queries, dev_skipped))
                confirm_folder(searcher, args.dev)
                from search.views import StoreViews

                entries = StoreViews(catalogue).log.entries(newest_first=False)
                row("with the other photos' views", *measure(searcher, feedback_queries(entries)), baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def copy_store(source: str, target: Path) -> str:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("store.lock", "serve.json", "feedback"))
    return str(target)


def confirm_folder(searcher, folder: Path) -> list[float]:
    """Confirm every labelled photo of `folder` as its ground-truth product; seconds per confirmation."""
    from search.evaluate import ReferenceIndex
    from search.views import StoreViews

    views = StoreViews(searcher.catalogue, searcher=searcher, limit=1000)
    references = ReferenceIndex(searcher)
    seconds = []
    with open(folder / "ground_truth.csv", newline="") as handle:
        rows = [r for r in csv.reader(handle)][1:]
    confirmed = set()
    for query, reference in rows:
        product = references.product_for(reference)
        if product is None or query in confirmed or not (folder / query).is_file():
            continue  # a photo with several valid products is confirmed once, as its first, as staff would
        confirmed.add(query)
        t = time.perf_counter()
        views.record((folder / query).read_bytes(), name=query, product_id=product, origin="cli")
        seconds.append(time.perf_counter() - t)
    return seconds


def top_up(searcher, size: int, rng) -> None:
    """Add noisy copies of the real store views (spread over random products) until there are `size`."""
    from indexer.store import Point
    from indexer.store.schema import FEEDBACK, NOT_STORE_VIEWS, PRODUCT_ID, SOURCE, STORE_SOURCE, STORE_VIEWS

    catalogue = searcher.catalogue
    real = [pid for pid, _ in catalogue.store_views()]
    names = [s.vector for s in searcher.specs]
    stored = catalogue.vectors(real, names)
    products = sorted({p.get(PRODUCT_ID) for _, p in catalogue.scroll((PRODUCT_ID,), NOT_STORE_VIEWS)})
    missing = size - catalogue.count(STORE_VIEWS)
    for start in range(0, max(0, missing), 512):
        points = []
        for i in range(start, min(missing, start + 512)):
            base = stored[real[i % len(real)]]
            vectors = {}
            for name in names:
                v = base[name] + rng.normal(0, 0.05, base[name].shape)
                vectors[name] = (v / np.linalg.norm(v)).astype(np.float32)
            product = products[int(rng.integers(len(products)))]
            points.append(Point(str(uuid.uuid4()), vectors, {PRODUCT_ID: product, SOURCE: STORE_SOURCE, FEEDBACK: {"id": -1}}))
        catalogue.upsert(points)
    catalogue.build_index()


def latency(searcher, photos: list[Path]) -> str:
    """p50 / p95 of the store query and ranking, and of the whole search, over `photos` (after 3 warm-ups)."""
    from indexer.store.schema import STORE_VIEWS
    from search.options import SearchOptions

    options = SearchOptions()
    for photo in photos[:3]:
        searcher.search_file(photo, options)
    query, whole = [], []
    for photo in photos:
        result = searcher.search_file(photo, options)
        query.append(result.timings["query"] + result.timings["rank"])
        whole.append(result.timings["total"])
    views = searcher.catalogue.count(STORE_VIEWS)

    def ms(values):
        return f"{statistics.median(values) * 1000:6.1f} / {np.percentile(values, 95) * 1000:6.1f} ms"

    return f"  {views:>6,} store views: query + rank {ms(query)}   whole search {ms(whole)}"


if __name__ == "__main__":
    raise SystemExit(main())
