"""Synthetic store photos with ground truth, from the catalogue itself: measure without labelled photos.

Targets are drawn at random from the catalogue; the clutter around each
comes from other catalogue images, never the target itself. Same seed, same
photos: figures made from them can be reproduced.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexer.errors import BadInputError
from indexer.images import load_rgb
from indexer.scan import scan
from search.storelike import ViewParams, store_view

#: Harder than the defaults of ViewParams: smaller products, more tilt and more clutter.
SYNTHETIC_VIEWS = ViewParams(scale=(0.35, 0.75), rotation=12.0, perspective=0.12, clutter_items=(2, 7))
FILLER_POOL = 400


def write_synthetic_queries(
    dam: Path,
    out: Path,
    *,
    count: int,
    seed: int = 0,
    view_seed: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Write `count` photos and `ground_truth.csv` (query,reference) into `out`; returns how many.

    `seed` picks the products; `view_seed` (default: `seed`) how each is shot. The same seed with
    another view seed photographs the same products again, independently (a second store visit)."""
    images = scan(dam).images
    if len(images) < 2:
        raise BadInputError(f"{dam}: needs at least two catalogue images (a target and some clutter)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    targets = [images[i] for i in order[: min(count, len(images))]]
    # Clutter comes from images that are not targets, or, in a catalogue smaller than `count`, from any other image.
    filler_sources = [images[i] for i in order[len(targets) :][:FILLER_POOL]] or [images[i] for i in order[:FILLER_POOL]]
    fillers: list[tuple[str, object]] = []
    for source in filler_sources:
        try:
            fillers.append((source.relative, load_rgb(source.path)))
        except BadInputError:
            continue
    views = rng if view_seed is None else np.random.default_rng([seed, view_seed])
    try:
        return _write(targets, fillers, out, views, progress)
    except OSError as exc:
        raise BadInputError(f"cannot write to {out}: {exc.strerror or exc}") from None


def _write(targets, fillers, out: Path, rng, progress) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out / "ground_truth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "reference"])
        for n, target in enumerate(targets):
            try:
                others = [image for relative, image in fillers if relative != target.relative]
                photo = store_view(load_rgb(target.path), rng, fillers=others, params=SYNTHETIC_VIEWS)
            except BadInputError:
                continue  # an unreadable catalogue file: sync reports it; nothing to draw here
            name = f"synthetic-{n:04d}.jpg"
            photo.save(out / name, quality=90)
            writer.writerow([name, target.relative])
            written += 1
            if progress:
                progress(1)
    return written
