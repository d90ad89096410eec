"""Ablations behind the pipeline's design choices, on cached EfficientNet-Lite features.

    cd benchmarks/research
    python ablations.py trim             ../../../shared/data/store-photos-dev /tmp/synth-12345
    python ablations.py catalogue-views  ../../../shared/data/store-photos-dev /tmp/synth-12345
    python ablations.py proposals        ../../../shared/data/store-photos-dev /tmp/synth-12345
    python ablations.py ensemble         ../../../shared/data/store-photos-dev /tmp/synth-12345
    python ablations.py pooling          ../../../shared/data/store-photos-dev /tmp/synth-12345
    python ablations.py dense-rerank     ../../../shared/data/store-photos-dev /tmp/synth-12345
    python ablations.py sift             ../../../shared/data/store-photos-dev /tmp/synth-12345

Each folder needs a ground_truth.csv; the synthetic set of the closing notes is
`search synthesize ../shared/data/dam /tmp/synth-12345 --count 300 --seed 12345`.
Prints top-1 / top-5 / top-10 (%), MRR and median rank per variant. Cosine
only, no colour: these isolate one idea each. Slow parts (catalogue features,
catalogue views, SIFT keypoints) are cached under $ABLATION_CACHE.
"""

import os
import sys
import time

import numpy as np
from harness import (
    CACHE,
    DAM,
    crop,
    dam_fmaps,
    fmaps,
    fmt,
    l2n,
    load_queries,
    metrics,
    pool,
    ranks_from_scores,
)
from PIL import Image, ImageEnhance, ImageOps

from indexer.images import load_rgb


def report(label, S, truth):
    print(f"  {label:44s} {fmt(metrics(ranks_from_scores(S, truth)))}")


def trim(photos, truth):
    """Catalogue shots resized whole vs trimmed like the ImageNet reference (size/(size+32))."""
    whole, trimmed = pool(dam_fmaps(224)), pool(dam_fmaps(224, crop=True))
    for share in (1.0, 0.7, 0.55):
        Q = pool(fmaps([crop(p, share) for p in photos], 224))
        report(f"query centre {share}, catalogue whole", Q @ whole.T, truth)
        report(f"query centre {share}, catalogue trimmed", Q @ trimmed.T, truth)


def _cutout_on(image, background, share, rng=None):
    from search.storelike import clutter_background, product_cutout

    cut = product_cutout(image)
    cut.thumbnail((int(256 * share), int(256 * share)))
    canvas = clutter_background((256, 256), rng, [], 0) if background is None else Image.new("RGB", (256, 256), background)
    canvas.paste(cut, ((256 - cut.width) // 2, (256 - cut.height) // 2), cut)
    return canvas


CATALOGUE_VIEWS = {
    "mirrored": lambda im, i: ImageOps.mirror(im),
    "grey backdrop": lambda im, i: _cutout_on(im, (128, 128, 128), 0.8),
    "beige, dimmer": lambda im, i: ImageEnhance.Brightness(_cutout_on(im, (205, 195, 180), 0.7)).enhance(0.85),
    "shop wall": lambda im, i: _cutout_on(im, None, 0.65, np.random.default_rng(i)),
    "dark backdrop": lambda im, i: _cutout_on(im, (40, 40, 45), 0.75),
}


def catalogue_views(photos, truth):
    """Extra store-like vectors per catalogue image; a product scores its best view."""
    D = pool(dam_fmaps(224))
    views = {}
    images = None
    for name, make in CATALOGUE_VIEWS.items():
        path = os.path.join(CACHE, f"view_{name.replace(' ', '_').replace(',', '')}.npy")
        if not os.path.exists(path):
            images = images or [load_rgb(f) for f in DAM]
            np.save(path, pool(fmaps([make(im, i) for i, im in enumerate(images)], 224)))
        views[name] = np.load(path)
    Q = pool(fmaps([crop(p, 0.55) for p in photos], 224))
    report("catalogue shot only", Q @ D.T, truth)
    for name, V in views.items():
        report(f"+ {name}", np.maximum(Q @ D.T, Q @ V.T), truth)
    report("+ all views", np.max([Q @ D.T] + [Q @ V.T for V in views.values()], axis=0), truth)


def proposals(photos, truth):
    """Crops scored by the embedding (best crop, or a mix) vs the plain centre crop."""
    from search.locate import proposal_boxes

    D = pool(dam_fmaps(224))
    rows = {
        k: []
        for k in (
            "centre 0.55",
            "mean of all crops",
            "best crop by max cosine",
            "best crop by top-10 mean",
            "top-3 crops by top-10 mean",
        )
    }
    for photo in photos:
        boxes = proposal_boxes(photo.size, (0.35, 0.5, 0.65, 0.85))
        S = pool(fmaps([photo.crop(b) for b in boxes], 224)) @ D.T
        ordered = -np.sort(-S, axis=1)
        top10 = ordered[:, :10].mean(1)
        rows["centre 0.55"].append(pool(fmaps([crop(photo, 0.55)], 224))[0] @ D.T)
        rows["mean of all crops"].append(S.mean(0))
        rows["best crop by max cosine"].append(S[np.argmax(ordered[:, 0])])
        rows["best crop by top-10 mean"].append(S[np.argmax(top10)])
        rows["top-3 crops by top-10 mean"].append(S[np.argsort(-top10)[:3]].mean(0))
    for name, S in rows.items():
        report(name, np.stack(S), truth)


def _centre_views(photos):
    """The `centre` localiser's views: whole photo, centre crops 0.7 and 0.5, GrabCut cut-out on white."""
    from search.foreground import on_white, product_mask

    cutouts = []
    for photo in photos:
        region = crop(photo, 0.9)
        cutouts.append(on_white(region, product_mask(region)))
    return {"whole": photos, "c0.7": [crop(p, 0.7) for p in photos], "c0.5": [crop(p, 0.5) for p in photos], "cut-out": cutouts}


def ensemble(photos, truth):
    """Lite0, Lite2 and both, for single views and the mean of views (GrabCut on white included)."""
    D0, D2 = pool(dam_fmaps(224)), pool(dam_fmaps(260, "efficientnet-lite2"))
    views = _centre_views(photos)
    V0 = {k: pool(fmaps(v, 224)) for k, v in views.items()}
    V2 = {k: pool(fmaps(v, 260, "efficientnet-lite2")) for k, v in views.items()}
    for label, keys in (("whole", ["whole"]), ("c0.5", ["c0.5"]), ("cut-out", ["cut-out"]), ("mean of the 4 views", list(views))):
        report(f"lite0 {label}", sum(V0[k] @ D0.T for k in keys), truth)
        report(f"lite2 {label}", sum(V2[k] @ D2.T for k in keys), truth)
        report(f"lite0+lite2 {label}", sum(V0[k] @ D0.T + V2[k] @ D2.T for k in keys), truth)


def pooling(photos, truth):
    """Generalised-mean (GeM) pooling of the last feature map instead of the average (p = 1)."""

    def gem(F, p):
        F = np.maximum(np.asarray(F, dtype=np.float32), 1e-6)
        return l2n((F**p).mean(axis=(2, 3)) ** (1 / p))

    D0, D2 = dam_fmaps(224), dam_fmaps(260, "efficientnet-lite2")
    views = _centre_views(photos)
    F0 = [fmaps(v, 224) for v in views.values()]
    F2 = [fmaps(v, 260, "efficientnet-lite2") for v in views.values()]
    for p in (1, 2, 3, 4):
        q0, q2 = l2n(sum(gem(F, p) for F in F0)), l2n(sum(gem(F, p) for F in F2))
        S0, S2 = q0 @ gem(D0, p).T, q2 @ gem(D2, p).T
        report(f"GeM p={p}, lite0, mean of the 4 views", S0, truth)
        report(f"GeM p={p}, lite0+lite2, mean of the 4 views", (S0 + S2) / 2, truth)


def dense_rerank(photos, truth):
    """Late interaction on the 7x7 feature map (Chamfer / mutual nearest neighbours) over the top 100."""
    F = dam_fmaps(224)
    D = pool(F)

    def local(maps):
        X = np.asarray(maps, dtype=np.float32).reshape(len(maps), maps.shape[1], -1).transpose(0, 2, 1)
        return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-6)

    QF = fmaps([crop(p, 0.55) for p in photos], 224)
    Q, QL = pool(QF), local(QF)
    S = Q @ D.T
    chamfer, fused = S.copy(), S.copy()
    for qi in range(len(photos)):
        top = np.argsort(-S[qi])[:100]
        best = np.einsum("pc,ndc->npd", QL[qi], local(F[top])).max(2).mean(1)
        chamfer[qi] = -1e9
        chamfer[qi, top] = best + 1e-6 * S[qi, top]
        fused[qi, top] = S[qi, top] + best
    report("global cosine (centre 0.55)", S, truth)
    report("Chamfer over top 100", chamfer, truth)
    report("cosine + Chamfer", fused, truth)


def sift(photos, truth, K=50, beta=0.2, floor=15):
    """SIFT + RANSAC homography inliers over the top K, gated: cos + beta*log1p(max(inliers - floor, 0))."""
    import pickle

    import cv2

    cv2.setNumThreads(1)
    catalogue_sift, query_sift = cv2.SIFT_create(1000), cv2.SIFT_create(1500)

    def features(gray, detector):
        keypoints, descriptors = detector.detectAndCompute(gray, None)
        if descriptors is None:
            return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
        descriptors = descriptors.astype(np.float32)
        descriptors /= np.maximum(descriptors.sum(1, keepdims=True), 1e-7)
        return np.float32([k.pt for k in keypoints]), np.sqrt(descriptors)  # RootSIFT

    path = os.path.join(CACHE, "sift_catalogue.pkl")
    if not os.path.exists(path):
        t = time.time()
        cached = [features(cv2.imread(f, cv2.IMREAD_GRAYSCALE), catalogue_sift) for f in DAM]
        print(f"catalogue SIFT: {(time.time() - t) / len(DAM) * 1000:.0f} ms per image")
        with open(path, "wb") as f:
            pickle.dump(cached, f)
    with open(path, "rb") as f:
        catalogue = pickle.load(f)
    matcher = cv2.BFMatcher(cv2.NORM_L2)

    def inliers(q, c):
        (qxy, qd), (cxy, cd) = q, c
        if len(qd) < 2 or len(cd) < 2:
            return 0
        best = {}
        for m in matcher.knnMatch(qd, cd, k=2):
            ratio_ok = len(m) == 2 and m[0].distance < 0.8 * m[1].distance
            if ratio_ok and (m[0].trainIdx not in best or m[0].distance < best[m[0].trainIdx].distance):
                best[m[0].trainIdx] = m[0]
        if len(best) < floor:
            return 0
        good = list(best.values())
        _, mask = cv2.findHomography(
            qxy[[m.queryIdx for m in good]], cxy[[m.trainIdx for m in good]], cv2.RANSAC, 8.0, maxIters=2000, confidence=0.995
        )
        return 0 if mask is None else int(mask.sum())

    D = pool(dam_fmaps(224))
    S = pool(fmaps([crop(p, 0.55) for p in photos], 224)) @ D.T
    verified = S.copy()
    seconds = []
    for qi, photo in enumerate(photos):
        region = crop(photo, 0.8)
        scale = 400 / (0.55 * min(photo.size))
        region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))))
        t = time.perf_counter()
        q = features(cv2.cvtColor(np.asarray(region), cv2.COLOR_RGB2GRAY), query_sift)
        top = np.argsort(-S[qi])[:K]
        counts = np.array([inliers(q, catalogue[i]) for i in top])
        verified[qi, top] = S[qi, top] + beta * np.log1p(np.maximum(counts - floor, 0))
        seconds.append(time.perf_counter() - t)
    report("global cosine (centre 0.55)", S, truth)
    report(f"+ SIFT verification K={K} floor={floor} beta={beta}", verified, truth)
    print(f"  SIFT verification: median {np.median(seconds) * 1000:.0f} ms per photo")


EXPERIMENTS = {
    "trim": trim,
    "catalogue-views": catalogue_views,
    "proposals": proposals,
    "ensemble": ensemble,
    "pooling": pooling,
    "dense-rerank": dense_rerank,
    "sift": sift,
}


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in EXPERIMENTS:
        sys.exit(f"usage: python ablations.py {{{','.join(EXPERIMENTS)}}} QUERY_FOLDER [QUERY_FOLDER ...]")
    for folder in sys.argv[2:]:
        names, truth, paths = load_queries(folder)
        print(f"{folder} ({len(names)} photos): top-1 top-5 top-10, MRR, median rank")
        EXPERIMENTS[sys.argv[1]]([load_rgb(p, draft=512) for p in paths], truth)
