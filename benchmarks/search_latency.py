"""Latency of `search image` per stage, for each localiser, against the whole-photo baseline in the same run.

    python benchmarks/search_latency.py ../shared/data/store-photos-dev --qdrant-path /tmp/q --locate none centre proposals

The model is loaded once (as in a service); each photo is searched `--repeat`
times after one warm-up. Prints the median milliseconds of each stage and the
ratio of each localiser's total to the `none` (whole photo) baseline.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path)
    parser.add_argument("--qdrant-path", required=True)
    parser.add_argument("--collection", default="catalogue")
    parser.add_argument("--locate", nargs="+", default=["none", "centre"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"], help="as search image's --runtime")
    args = parser.parse_args()

    from catalogue_cli.options import model_loading
    from indexer.images import IMAGE_SUFFIXES
    from indexer.store import open_store
    from search.query import Searcher, SearchOptions

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    store = open_store(path=args.qdrant_path)
    catalogue = store.collection(args.collection)
    options = SearchOptions()
    totals: dict[str, float] = {}
    try:
        for name in (["none"] if "none" not in args.locate else []) + args.locate:
            searcher = Searcher(catalogue, localiser=name, **model_loading(args.device, args.runtime))
            searcher.search_file(photos[0], options)  # warm-up: lazy imports, first allocations
            timings: dict[str, list[float]] = {}
            for photo in photos:
                for _ in range(args.repeat):
                    for stage, seconds in searcher.search_file(photo, options).timings.items():
                        timings.setdefault(stage, []).append(seconds * 1000)
            medians = {stage: statistics.median(values) for stage, values in timings.items()}
            totals[name] = medians["total"]
            models = ",".join(s.model for s in searcher.specs)
            print(
                f"{name:10s} ({models}, {len(photos)} photos): "
                + ", ".join(f"{stage} {ms:.0f}" for stage, ms in medians.items())
                + " ms (medians)"
            )
        for name, total in totals.items():
            print(f"{name:10s} total {total:6.0f} ms   x{total / totals['none']:.2f} the whole-photo baseline")
    finally:
        store.close()


if __name__ == "__main__":
    main()
