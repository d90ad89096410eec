"""Dominant colours: CIELAB conversion, backdrop removal, palettes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import DATA
from PIL import Image, ImageDraw

from indexer.colour import (
    Palette,
    extract_palette,
    foreground_mask,
    lab_distance,
    srgb_to_lab,
)
from indexer.images import load_rgb


def test_srgb_to_lab_matches_reference_values():
    # Reference values: CIE L*a*b* (D65) of the sRGB primaries and white.
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=np.uint8)
    expected = np.array(
        [[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86], [100.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    )
    assert np.allclose(srgb_to_lab(rgb), expected, atol=0.05)


def test_product_colour_ignores_the_white_backdrop():
    image = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 140, 140), fill=(20, 20, 20))  # small black product
    palette = extract_palette(image)
    assert palette.dominant[0] < 15  # black, although most pixels are white
    assert 0.1 < palette.foreground_share < 0.25


def test_white_details_enclosed_by_the_product_stay_foreground():
    image = Image.new("RGB", (100, 100), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 80, 80), fill=(150, 0, 0))
    draw.rectangle((40, 40, 60, 60), fill="white")  # a white dial inside a red case
    small_lab = srgb_to_lab(np.asarray(image.resize((96, 96))))
    mask = foreground_mask(small_lab)
    assert mask[48, 48] and not mask[2, 2]


def test_photo_without_flat_backdrop_uses_every_pixel():
    rng = np.random.default_rng(0)
    clutter = Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    assert extract_palette(clutter).foreground_share == 1.0


def test_all_white_image_falls_back_to_the_whole_image():
    palette = extract_palette(Image.new("RGB", (50, 50), "white"))
    assert palette.foreground_share == 1.0 and palette.dominant[0] > 99


def test_palette_weights_are_sorted_and_sum_to_one():
    palette = extract_palette(load_rgb(DATA / "dam" / "M3550HLEZJM900.jpeg"), k=3)
    assert len(palette.weights) <= 3 and np.isclose(palette.weights.sum(), 1.0)
    assert list(palette.weights) == sorted(palette.weights, reverse=True)
    restored = Palette.from_payload(palette.to_payload())
    assert np.allclose(restored.lab, palette.lab, atol=0.01)


def test_distinct_colours_are_far_apart_and_shades_close():
    red, dark_red, blue = srgb_to_lab(np.array([[200, 20, 20], [170, 15, 15], [20, 20, 200]], dtype=np.uint8))
    assert lab_distance(red, dark_red) < 15
    assert lab_distance(red, blue) > 60


def test_dark_studio_backdrops_are_removed_too():
    # Some catalogue shots are on black: the mint-green bag must read mint green, not black.
    palette = extract_palette(load_rgb(DATA / "dam" / "S0949HAQRJM042.jpeg"))
    L, a, b = palette.dominant
    assert L > 50 and a < -8 and b > 5
    assert palette.foreground_share < 0.3


def _catalogue_shots() -> list[Path]:
    paths = sorted((DATA / "dam").glob("*.jpeg")) + sorted((DATA / "catalogue").glob("*.jpeg"))
    assert len(paths) > 30
    return paths


def test_weighted_clustering_equals_scipys_kmeans2_on_the_expanded_pixels():
    """k-means on the colour bins, each weighing its pixel count, is k-means on the pixels themselves:
    kmeans2 from the same start, on every bin repeated as often as it has pixels, gives the same
    clusters and weights."""
    import warnings

    from scipy.cluster.vq import kmeans2

    from indexer.colour import _bin_index, _binned_lab, _kmeans_plus_plus, _lloyd, thumbnail

    for path in _catalogue_shots():
        rgb = np.asarray(thumbnail(load_rgb(path)))
        bins = _bin_index(rgb)
        mask = foreground_mask(srgb_to_lab(rgb))
        lab, counts = _binned_lab(rgb[mask], bins[mask])
        start = _kmeans_plus_plus(lab, counts, 3, seeds=[0])
        ours, labels = (run[0] for run in _lloyd(lab, counts, start))
        pixels = np.repeat(lab, counts.astype(int), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, their_labels = kmeans2(pixels, start[0].copy(), iter=20, minit="matrix")
        assert np.allclose(ours, theirs, atol=1e-9), path.name
        mass = np.bincount(labels, weights=counts, minlength=3)
        assert np.array_equal(mass, np.bincount(their_labels, minlength=3)), path.name


def test_restarts_keep_the_tightest_clustering():
    from indexer.colour import _weighted_kmeans

    rng = np.random.default_rng(0)
    points = np.concatenate(
        [rng.normal(centre, 3.0, (40, 3)) for centre in ((20, 0, 0), (60, 30, 10), (80, -20, 40), (50, 0, -40))]
    )
    weights = rng.integers(1, 20, len(points)).astype(float)

    def inertia(centres):
        return (((points[:, None] - centres[None]) ** 2).sum(axis=2).min(axis=1) * weights).sum()

    single = [inertia(_weighted_kmeans(points, weights, 3, seed)[0]) for seed in range(5)]
    assert np.isclose(inertia(_weighted_kmeans(points, weights, 3, 0, restarts=5)[0]), min(single))
