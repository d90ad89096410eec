"""Out-of-sample quality of the "not sure" confidence: score and margin alone, against the agreement signals.

    python benchmarks/confidence_auc.py ../shared/data/dam --qdrant-path /tmp/q_ens \
        --dev ../shared/data/store-photos-dev --train 150 --test 150

Each photo gives two answers to judge: as it is (right or wrong top-1) and with its true product hidden
(a product not in the catalogue: always wrong). AUC = how well the confidence ranks right answers above
wrong ones. Prints, for each signal set (top and margin; each agreement signal of
search/confidence.py added alone; all of them):
  synth -> dev     fitted on `--train` synthetic photos (seed 0), judged on the labelled dev photos;
  synth -> synth   the same fit, judged on `--test` other synthetic photos (seed 1, other products);
  dev, LOPO        leave one photo out on dev: each photo judged by a fit on all the others;
and for the set `search eval --calibrate` chooses itself (cross-validated on the photos it is given);
then each fit on the training photos as a `Calibration` (the built-in one is the fit that transfers
best to the real dev photos). `--samples FILE` keeps the searched answers to report again without searching.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dam", type=Path)
    parser.add_argument("--qdrant-path", required=True)
    parser.add_argument("--collection", default="catalogue")
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--train", type=int, default=150)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument(
        "--samples", type=Path, help="Keep the searched answers in this JSON file, and reuse them when it exists."
    )
    args = parser.parse_args()

    from indexer.store import open_store
    from search.evaluate import Setting, evaluate, folder_queries, read_ground_truth
    from search.query import Searcher
    from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD
    from search.synthetic import write_synthetic_queries

    setting = Setting("colour", True, DEFAULT_ALPHA, DEFAULT_THRESHOLD)
    if args.samples and args.samples.is_file():
        train, test, dev = json.loads(args.samples.read_text())
        return report(train, test, dev)
    work = Path(tempfile.mkdtemp(prefix="confidence-"))
    try:
        write_synthetic_queries(args.dam, work / "train", count=args.train, seed=0)
        write_synthetic_queries(args.dam, work / "test", count=args.test, seed=1)
        with open_store(path=args.qdrant_path) as store:
            searcher = Searcher(store.collection(args.collection))

            def samples(folder: Path) -> list[list[tuple[dict, bool]]]:
                """Per photo: its answers as (signals, right)."""
                queries, skipped = folder_queries(folder, read_ground_truth(folder / "ground_truth.csv"))
                evaluation = evaluate(searcher, queries, [setting], skipped=skipped)
                return [
                    [(r.top_signals["colour"], r.ranks["colour"] == 1)]
                    + ([(r.hidden_signals["colour"], False)] if r.hidden_signals.get("colour") else [])
                    for r in evaluation.results
                ]

            train, test, dev = samples(work / "train"), samples(work / "test"), samples(args.dev)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.samples:
        args.samples.write_text(json.dumps([train, test, dev]))
    return report(train, test, dev)


def report(train, test, dev) -> int:
    from search.confidence import SIGNALS, fit

    flat = [s for photo in train for s in photo]
    print(
        f"photos: train {len(train)} synthetic, test {len(test)} synthetic, dev {len(dev)}; "
        f"top-1 right: train {sum(p[0][1] for p in train)}, test {sum(p[0][1] for p in test)}, dev {sum(p[0][1] for p in dev)}"
    )
    print(f"{'signals':<60} {'synth->dev':>10} {'synth->synth':>12} {'dev LOPO':>9} {'in-sample':>9}")
    fits = {}
    base = ("top", "margin")
    sets = [("top, margin", base)] + [(f"top, margin, {extra}", (*base, extra)) for extra in SIGNALS[2:]]
    sets.append(("all: " + ", ".join(SIGNALS), SIGNALS))
    sets.append(("chosen by cross-validation on the fit's photos", None))
    groups = [n for n, photo in enumerate(train) for _ in photo]
    for label, names in sets:
        calibration, quality = fit(flat, source="synthetic", names=names, groups=groups)
        if names is None:
            label = f"chosen ({', '.join(quality['signals'])})"
        fits[label] = calibration
        print(
            f"{label:<60} {auc(calibration, dev):>10.3f} {auc(calibration, test):>12.3f} "
            f"{leave_one_photo_out(dev, names):>9.3f} {quality['auc']:>9.3f}"
        )
    for label, calibration in fits.items():
        print(f"fit ({label}): weights={dict(calibration.weights)} bias={calibration.bias} samples={calibration.samples}")
    return 0


def auc(calibration, photos) -> float:
    from sklearn.metrics import roc_auc_score

    pairs = [s for photo in photos for s in photo]
    return float(roc_auc_score([right for _, right in pairs], [calibration.confidence(found) for found, _ in pairs]))


def leave_one_photo_out(photos, names) -> float:
    """Each photo's answers judged by a fit on every other photo's."""
    from sklearn.metrics import roc_auc_score

    from search.confidence import fit

    labels, predicted = [], []
    for i, photo in enumerate(photos):
        others = [s for j, p in enumerate(photos) if j != i for s in p]
        groups = [j for j, p in enumerate(photos) if j != i for _ in p]
        try:
            calibration, _ = fit(others, source="lopo", names=names, groups=groups)
        except ValueError:
            continue
        for found, right in photo:
            labels.append(right)
            predicted.append(calibration.confidence(found))
    return float(roc_auc_score(labels, predicted)) if len(set(labels)) == 2 else float("nan")


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
