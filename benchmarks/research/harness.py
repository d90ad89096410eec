"""Shared pieces of the retrieval ablations: cached catalogue feature maps, poolings, metrics.

Research code: it bypasses Qdrant and the CLI to try many variants quickly on
the same cached features. Paths come from the environment:

    CATALOGUE_DAM     catalogue folder     (default ../shared/data/dam)
    ABLATION_CACHE    where feature caches go (default /tmp/catalogue-ablations)
"""

import csv
import glob
import os
import time

import numpy as np
import torch
from PIL import Image

from indexer.encoders.efficientnet import build_reference, fuse_batch_norms
from indexer.images import load_rgb

DAM = sorted(glob.glob(os.path.join(os.environ.get("CATALOGUE_DAM", "../shared/data/dam"), "*.jpeg")))
STEMS = [os.path.basename(f).rsplit(".", 1)[0] for f in DAM]
INDEX = {s: i for i, s in enumerate(STEMS)}
CACHE = os.environ.get("ABLATION_CACHE", "/tmp/catalogue-ablations")
os.makedirs(CACHE, exist_ok=True)
_models = {}


def model(name="efficientnet-lite0"):
    if name not in _models:
        _models[name] = fuse_batch_norms(build_reference(name)).eval().to(memory_format=torch.channels_last)
    return _models[name]


def to_input(im, size):
    a = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return ((a - 127) / 128).transpose(2, 0, 1)


def fmaps(images, size, name="efficientnet-lite0", bs=32):
    """Last feature maps (n, 1280, h, w), fp16, of images resized (whole) to size x size."""
    m = model(name)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), bs):
            x = torch.from_numpy(np.stack([to_input(im, size) for im in images[i : i + bs]]))
            out.append(m.extract_features(x.contiguous(memory_format=torch.channels_last)).numpy().astype(np.float16))
    return np.concatenate(out)


def dam_fmaps(size=224, name="efficientnet-lite0", crop=False):
    """Catalogue feature maps, cached; crop=True applies the ImageNet reference trim (size/(size+32))."""
    path = os.path.join(CACHE, f"dam_{name}_{size}_{int(crop)}.npy")
    if os.path.exists(path):
        return np.load(path, mmap_mode="r")
    images = []
    for f in DAM:
        im = load_rgb(f)
        if crop:
            w, h = im.size
            c = min(w, h) * size / (size + 32)
            im = im.crop(((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2))
        images.append(im)
    t = time.time()
    features = fmaps(images, size, name)
    print(f"catalogue feature maps {name}@{size}: {time.time() - t:.0f} s")
    np.save(path, features)
    return features


def l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pool(F, how="avg"):
    F = np.asarray(F, dtype=np.float32)
    return l2n(F.mean(axis=(2, 3)) if how == "avg" else F.max(axis=(2, 3)))


def crop(im, share):
    """Centred square of `share` of the short side."""
    w, h = im.size
    c = min(w, h) * share
    return im.crop(((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2))


def load_queries(folder, limit=None):
    """(names, sets of catalogue rows that are right, paths) from folder/ground_truth.csv."""
    with open(os.path.join(folder, "ground_truth.csv"), newline="") as f:
        rows = list(csv.reader(f))[1:]
    truth = {}
    for q, r in rows:
        truth.setdefault(q, set()).add(INDEX[os.path.basename(r).rsplit(".", 1)[0]])
    names = sorted(truth)[:limit]
    return names, [truth[n] for n in names], [os.path.join(folder, n) for n in names]


def ranks_from_scores(S, truth):
    return np.array([int((s > max(s[list(g)])).sum()) + 1 for s, g in zip(S, truth)])


def metrics(r):
    return {
        "top1": np.mean(r <= 1),
        "top5": np.mean(r <= 5),
        "top10": np.mean(r <= 10),
        "mrr": np.mean(1 / r),
        "med": np.median(r),
    }


def fmt(m):
    return f"{m['top1'] * 100:5.1f} {m['top5'] * 100:5.1f} {m['top10'] * 100:5.1f}  mrr {m['mrr']:.3f} med {m['med']:.0f}"
