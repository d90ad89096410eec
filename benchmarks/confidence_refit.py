"""The store's own calibration against the built-in one: the refit `search serve` runs (search/refit.py).

    CATALOGUE_CACHE=/work/snap/onnx python benchmarks/confidence_refit.py --qdrant-path STORE \\
        --dev ../shared/data/store-photos-dev [--dam ../shared/data/dam --stream 90 --every 30]

Works on copies of STORE in a temporary folder: STORE is never written to.

dev: each labelled dev photo is recorded as a staff answer (the search's first product when the ground
truth lists it: a confirmation; else the first listed product: a correction), then one refit as the
server runs it: the new calibration judged leave one photo out, the built-in one on the same answers.
Prints both AUCs and the share of right answers under the page's threshold (flagged "Not sure").

stream (`--stream N`, synthetic: plumbing and cost only): N synthetic photos (`search synthesize`, seed
1: the built-in calibration was fitted on seed 0's) recorded one by one as confirmations on another copy, a refit every `--every` answers, adopted only
when better, as the server does. Prints, per refit: answers, AUC new vs in force, adopted, seconds.
Synthetic photos decide nothing here: they do not look like a store's photos.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qdrant-path", type=Path, required=True)
    parser.add_argument("--collection", default="catalogue")
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--dam", type=Path, help="The DAM folder, for --stream's synthetic photos.")
    parser.add_argument("--stream", type=int, default=0, help="Synthetic confirmations to stream (0: none).")
    parser.add_argument("--every", type=int, default=30, help="Refit after this many streamed answers.")
    parser.add_argument("--json", type=Path, help="Also write every figure here.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="refit-"))
    figures: dict = {}
    try:
        figures["dev"] = dev_figures(copy_of(args.qdrant_path, work / "dev"), args.collection, args.dev)
        if args.stream:
            synthetic = work / "synthetic"
            from search.synthetic import write_synthetic_queries

            write_synthetic_queries(args.dam, synthetic, count=args.stream, seed=1)
            figures["stream"] = stream_figures(copy_of(args.qdrant_path, work / "stream"), args.collection, synthetic, args.every)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def copy_of(store: Path, to: Path) -> Path:
    shutil.copytree(store, to, ignore=shutil.ignore_patterns("store.lock"))
    return to


def dev_figures(store: Path, collection: str, dev: Path) -> dict:
    from indexer.store import open_store
    from search.evaluate import ReferenceIndex, folder_queries, read_ground_truth
    from search.query import Searcher
    from search.refit import try_fit
    from search.views import StoreViews

    queries, _ = folder_queries(dev, read_ground_truth(dev / "ground_truth.csv"))
    with open_store(path=store) as opened:
        searcher = Searcher(opened.collection(collection))
        views = StoreViews(searcher.catalogue, searcher=searcher)
        references = ReferenceIndex(searcher)
        for query in queries:
            valid = [p for p in map(references.product_for, query.references) if p]
            data = query.photo.read_bytes()
            answered = [m.product_id for m in searcher.search_bytes_or_path(data, _options(), query=query.name).matches]
            product = answered[0] if answered[0] in valid else valid[0]
            views.record(data, name=query.name, product_id=product, answered=answered, origin="cli")
        trial = try_fit(searcher, views.log.entries(newest_first=False))
    f = {**trial.figures, "auc_top_margin": top_and_margin(trial)}
    print(
        f"dev: {f['answers']} answers ({f['right']} right top-1 of {f['samples']} judged with the hidden ones), "
        f"{f.get('seconds')} s to refit\n"
        f"  built-in: AUC {f['auc_in_force']}, right answers flagged at 0.5: {f['flagged_right_in_force']}\n"
        f"  store's own, leave one photo out: AUC {f.get('auc')}, flagged: {f.get('flagged_right')}, signals {f.get('signals')}\n"
        f"  store's own on score and margin only (the built-in's signals), leave one photo out: AUC {f['auc_top_margin']}"
    )
    return f


def top_and_margin(trial) -> float:
    from sklearn.metrics import roc_auc_score

    from search.confidence import held_out

    predicted = held_out(trial.samples, trial.groups, names=("top", "margin"))
    return round(float(roc_auc_score([right for _, right in trial.samples], predicted)), 4)


def stream_figures(store: Path, collection: str, synthetic: Path, every: int) -> list[dict]:
    from indexer.store import open_store
    from search.evaluate import ReferenceIndex, folder_queries, read_ground_truth
    from search.query import Searcher
    from search.refit import keep, try_fit
    from search.views import StoreViews

    queries, _ = folder_queries(synthetic, read_ground_truth(synthetic / "ground_truth.csv"))
    fits = []
    with open_store(path=store) as opened:
        searcher = Searcher(opened.collection(collection))
        views = StoreViews(searcher.catalogue, searcher=searcher)
        references = ReferenceIndex(searcher)
        started = time.perf_counter()
        for n, query in enumerate(queries, start=1):
            product = next(p for p in map(references.product_for, query.references) if p)
            views.record(query.photo.read_bytes(), name=query.name, product_id=product, origin="cli")
            if n % every == 0:
                recorded = time.perf_counter() - started
                trial = try_fit(searcher, views.log.entries(newest_first=False))
                adopted = keep(searcher, trial)
                f = trial.figures
                fits.append({**f, "adopted": adopted, "recording_s": round(recorded, 1)})
                print(
                    f"stream: {n} answers ({f['right']} right): AUC {f.get('auc')} vs {f['auc_in_force']} for the {f['in_force']} "
                    f"in force, {'adopted' if adopted else 'kept'}; refit {f.get('seconds')} s ({f['search_s']} s searching); "
                    f"recording {every} answers {recorded:.0f} s"
                )
                started = time.perf_counter()
    return fits


def _options():
    from search.options import SearchOptions

    return SearchOptions()


if __name__ == "__main__":
    sys.exit(main())
