"""Finding the product in the photo: centre views, cut-out colours, crop proposals, OWLv2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from search.foreground import on_white, product_mask
from search.locate import (
    CentreViews,
    CropProposals,
    WholePhoto,
    centre_box,
    non_max_suppression,
    proposal_boxes,
)


def store_photo(size=(300, 400), product=(200, 30, 40), box=(90, 130, 210, 270)) -> Image.Image:
    """A coloured product in the middle of a shelf scene: a lit wall fading to shadow, shelves, other items."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(200, 70, size[1])[:, None, None] * np.ones((1, size[0], 3))
    pixels = np.clip(ramp + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    photo = Image.fromarray(pixels)
    draw = ImageDraw.Draw(photo)
    draw.rectangle((0, 300, size[0], 320), fill=(90, 80, 70))  # a shelf edge
    draw.rectangle((0, 40, 60, 300), fill=(60, 90, 120))  # a blue box at the left edge
    draw.rectangle((250, 20, 300, 200), fill=(170, 160, 90))  # a khaki bag at the right edge
    draw.ellipse(box, fill=product)
    return photo


def test_centre_views_are_centred_and_include_the_whole_photo():
    [region] = CentreViews().locate(Image.new("RGB", (300, 400)))
    assert region.views[0] == (0, 0, 300, 400)
    assert region.views[1] == centre_box((300, 400), 0.7) == (45, 95, 255, 305)
    assert region.cutout and region.box == centre_box((300, 400), 0.9)
    [whole] = WholePhoto().locate(Image.new("RGB", (300, 400)))
    assert whole.views == ((0, 0, 300, 400),) and not whole.cutout


def test_grabcut_separates_the_product_from_a_cluttered_background():
    photo = store_photo()
    region = photo.crop(centre_box(photo.size, 0.9))
    mask = product_mask(region)
    inside = mask[region.height // 2, region.width // 2]
    assert inside and 0.1 < mask.mean() < 0.5
    white = np.asarray(on_white(region, mask))
    assert tuple(white[0, 0]) == (255, 255, 255)  # the product now stands on white, like a catalogue shot


def test_query_colour_comes_from_the_product_not_the_photo():
    from indexer.colour import extract_palette

    # A product GrabCut separates cleanly (on the default, smaller ellipse its mask keeps as much grey
    # wall as red, and the dominant colour is a coin toss between them).
    photo = store_photo(product=(200, 30, 40), box=(75, 115, 225, 285))
    region = photo.crop(centre_box(photo.size, 0.9))
    product_colour = extract_palette(region, mask=product_mask(region)).dominant
    photo_colour = extract_palette(photo).dominant
    assert product_colour[1] > 40  # red: strongly positive a*
    assert abs(photo_colour[1]) < 10  # the grey background dominates the whole photo


def test_proposals_tile_the_photo_and_suppression_keeps_distinct_boxes():
    boxes = proposal_boxes((300, 400), (0.5, 0.85))
    assert all(0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 400 for x0, y0, x1, y1 in boxes)
    assert all(x1 - x0 == y1 - y0 for x0, y0, x1, y1 in boxes)
    covered = np.zeros((400, 300), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    keep = non_max_suppression([(0, 0, 100, 100), (5, 5, 105, 105), (200, 200, 300, 300)], np.array([0.5, 0.9, 0.7]), 0.3)
    assert keep == [1, 2]


@pytest.mark.parametrize("scores", [[0.4], [0.6, 0.6]])
def test_suppression_keeps_a_lone_box_and_boxes_of_equal_score(scores):
    boxes = [(0, 0, 100, 100), (300, 300, 400, 400)][: len(scores)]
    assert sorted(non_max_suppression(boxes, np.array(scores), 0.3)) == list(range(len(scores)))


def test_proposals_keep_the_most_product_like_crops_first():
    photo = Image.new("RGB", (400, 300), (128, 128, 128))
    ImageDraw.Draw(photo).rectangle((260, 160, 380, 280), fill=(220, 0, 0))  # a product off-centre

    def redness(crops):  # stands in for "similar to some catalogue product"
        return np.array([np.asarray(c)[..., 0].mean() - np.asarray(c)[..., 1].mean() for c in crops])

    regions = CropProposals(redness, max_regions=3).locate(photo)
    x0, y0, _x1, _y1 = regions[0].box
    assert x0 >= 200 and y0 >= 100  # the first region sits on the red product
    assert len(regions) <= 3 and regions[0].score >= regions[-1].score


@pytest.fixture(scope="session")
def tiny_owl(tmp_path_factory) -> str:
    """A random OWLv2 checkpoint and processor, saved like a hub download."""
    import torch
    import transformers
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2Processor,
    )

    folder = tmp_path_factory.mktemp("tiny-owl")
    letters = "abcdefghijklmnopqrstuvwxyz"
    # Token id 0 marks a padded query in OWL, so the vocabulary starts with the letters.
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(0)
    config = Owlv2Config(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": len(vocab),
            "max_position_embeddings": 16,
            "bos_token_id": 52,
            "eos_token_id": 53,
            "pad_token_id": 53,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    processor = Owlv2Processor(
        image_processor=transformers.Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    return str(folder)


def test_owlv2_loads_through_from_pretrained_and_returns_boxes_in_photo_pixels(tiny_owl):
    from search.detect import OwlDetector, Prompt

    detector = OwlDetector(tiny_owl, prompts=(Prompt.parse("a bag=W Bags"), Prompt.parse("a shoe")), threshold=0.0)
    photo = store_photo()
    found = detector.detect(photo)
    assert found, "a threshold of 0 keeps every box"
    for (x0, y0, x1, y1), score, prompt in found:
        assert 0 <= x0 < x1 <= photo.width and 0 <= y0 < y1 <= photo.height
        assert 0 <= score <= 1 and prompt.text in ("a bag", "a shoe")
    regions = detector.locate(photo)
    assert 1 <= len(regions) <= 5
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    assert detector.category_of("a bag") == "W Bags" and detector.category_of("a shoe") is None


def test_owlv2_with_no_detection_falls_back_to_the_centre(tiny_owl):
    from search.detect import OwlDetector

    regions = OwlDetector(tiny_owl, threshold=1.0).locate(store_photo())
    assert len(regions) == 1 and regions[0].box == centre_box((300, 400), 0.9)


def test_missing_detector_is_a_model_load_error(tmp_path):
    from indexer.errors import ModelLoadError
    from search.detect import OwlDetector

    with pytest.raises(ModelLoadError, match="--locate centre"):
        OwlDetector(str(tmp_path / "nothing-here"))


def test_search_with_a_detector_returns_a_group_per_product(synced, cli, store, tiny_owl, tmp_path):
    photo = tmp_path / "shelf.jpg"
    store_photo().save(photo)
    result = cli(
        "search",
        "image",
        photo,
        "--qdrant-path",
        store,
        "--json",
        "--locate",
        "owlv2",
        "--detector",
        tiny_owl,
        "--prompt",
        "a bag",
        "--prompt",
        "a shoe",
        "--max-products",
        "3",
    )
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    assert 1 <= len(entry["groups"]) <= 3
    for group in entry["groups"]:
        assert len(group["box"]) == 4 and group["label"] in ("a bag", "a shoe", None)
        assert group["matches"] and group["matches"][0]["rank"] == 1
    tops = [g["matches"][0]["product_id"] for g in entry["groups"]]
    assert len(tops) == len(set(tops))  # two boxes on one product make one group
    assert entry["matches"] == entry["groups"][0]["matches"]


def test_detector_options_need_the_detector(synced, cli, store, dam):
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--prompt", "a bag")
    assert result.exit_code == 2 and "--locate owlv2" in result.output


def test_default_search_reports_where_it_looked(synced, cli, store, tmp_path):
    photo = tmp_path / "shelf.jpg"
    store_photo().save(photo)
    [entry] = json.loads(cli("search", "image", photo, "--qdrant-path", store, "--json").stdout)
    assert entry["groups"][0]["box"] == list(centre_box((300, 400), 0.9))
    assert {"locate", "cutout", "embed", "colour", "query", "rank", "total"} <= set(entry["timings_ms"])


def test_synthesize_writes_photos_and_ground_truth_that_eval_reads(cli, dam, tmp_path):
    out = tmp_path / "synthetic"
    result = cli("search", "synthesize", dam, out, "--count", "5", "--seed", "3")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader((out / "ground_truth.csv").read_text().splitlines()))
    assert rows[0] == ["query", "reference"] and len(rows) == 6
    for query, reference in rows[1:]:
        assert (dam / reference).is_file()
        with Image.open(out / query) as photo:
            assert photo.size == (480, 640)
    again = tmp_path / "again"
    cli("search", "synthesize", dam, again, "--count", "5", "--seed", "3")
    assert (again / "ground_truth.csv").read_text() == (out / "ground_truth.csv").read_text()


def test_a_view_seed_shoots_the_same_products_again_differently(cli, dam, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    cli("search", "synthesize", dam, first, "--count", "4", "--seed", "3")
    cli("search", "synthesize", dam, second, "--count", "4", "--seed", "3", "--view-seed", "1")
    assert (first / "ground_truth.csv").read_text() == (second / "ground_truth.csv").read_text()
    for name in ("synthetic-0000.jpg", "synthetic-0003.jpg"):
        assert (first / name).read_bytes() != (second / name).read_bytes()
