"""`search image`: cosine candidates, colour re-scoring, one row per product."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import open_store, studio_shot
from edge_formula import formula_query

from search.rescore import colour_bonus, formula

# The tiny random model recognises only identical pixels: tests that need "a catalogue image finds
# itself" search the whole photo. Localisation is tested in test_locate.py and test_efficientnet.py.
WHOLE = ("--locate", "none")


def test_rescoring_formula_on_hand_computed_numbers():
    cosines = np.array([0.80, 0.80, 0.80, 0.70])
    distances = np.array([10.0, 40.0, 50.0, 0.0])
    # alpha 0.1, threshold 40: 0.8 + 0.1 * (1 - 10/40) = 0.875; at or beyond 40 no bonus; d = 0 gives all of alpha.
    assert np.allclose(cosines + colour_bonus(distances, alpha=0.1, threshold=40.0), [0.875, 0.80, 0.80, 0.80])
    assert np.allclose(colour_bonus(np.array([0.0, 20.0, 39.99, 45.0]), 0.05, 40.0), [0.05, 0.025, 0.0000125, 0.0])


def test_search_prints_a_ranked_table_with_score_breakdown(synced, cli, dam, store):
    result = cli("search", "image", dam / "M3550HLEZJM900.jpeg", "--qdrant-path", store, "--top-k", "5", *WHOLE)
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "product", "score", "cosine", "colour", "reference", "image"]
    assert len(lines) == 2 + 5
    first = lines[2].split()
    assert first[0] == "1" and first[1] == "M3550HLEZJM900"  # a catalogue image finds itself
    assert first[-1] == str(dam / "M3550HLEZJM900.jpeg")


def test_search_json_scores_add_up_and_are_sorted(synced, cli, dam, store):
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--json", *WHOLE)
    [entry] = json.loads(result.stdout)
    matches = entry["matches"]
    assert len(matches) == 10 and [m["rank"] for m in matches] == list(range(1, 11))
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    for m in matches:
        assert m["score"] == pytest.approx(m["cosine"] + m["colour_bonus"], abs=1e-5)
    assert matches[0]["product_id"] == "RED-BAG" and matches[0]["colour_bonus"] > 0.04


def test_no_colour_ranks_by_cosine_alone(synced, cli, dam, store):
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--json", "--no-colour")
    matches = json.loads(result.stdout)[0]["matches"]
    assert all(m["colour_bonus"] == 0 for m in matches)
    assert [m["score"] for m in matches] == [m["cosine"] for m in matches]


def test_colour_reorders_candidates_of_equal_shape(cli, tmp_path, store, tiny_clip):
    """Two products differing only in colour: the colour term must pick the right one."""
    dam = tmp_path / "colours"
    for name, rgb in {"RED": (200, 20, 30), "BLUE": (20, 40, 200), "YELLOW": (230, 210, 20)}.items():
        studio_shot(dam / f"{name}.png", rgb)
    cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store)
    query = studio_shot(tmp_path / "query.png", (185, 30, 40))  # a slightly different red
    with_colour = json.loads(cli("search", "image", query, "--qdrant-path", store, "--json", "--alpha", "1").stdout)
    assert with_colour[0]["matches"][0]["product_id"] == "RED"
    assert with_colour[0]["matches"][0]["colour_distance"] < 15


def test_one_qdrant_query_with_formula_equals_python_rescoring(synced, dam, store):
    """The README's single-query form (prefetch + formula), run by the embedded engine, ranks exactly like `search image`."""
    from indexer.images import load_rgb
    from search.query import Searcher, SearchOptions, rank

    with open_store(store) as handle:
        catalogue = handle.collection("catalogue")
        searcher = Searcher(catalogue)
        options = SearchOptions(top_k=16, candidates=16, alpha=0.2, threshold=60.0)
        [features] = searcher.features(load_rgb(dam / "generated" / "BLUE-BAG.png"))  # default pipeline: centre views
        python = rank(searcher.candidates(features, options.candidates), features.palette, options)
        hits = formula_query(
            catalogue,
            features.vectors[0],
            searcher.specs[0].vector,
            candidates=16,
            formula=formula(features.palette.dominant, options.alpha, options.threshold),
            limit=16,
        )
    # The same scores in the same order; products with identical photos tie, and may come in either order.
    assert np.allclose([h.score for h in hits], [m.score for m in python], atol=1e-5)
    assert _by_score([(h.score, h.payload["product_id"]) for h in hits]) == _by_score([(m.score, m.product_id) for m in python])
    assert any(m.colour_bonus > 0 for m in python) and any(m.colour_bonus == 0 for m in python)


def _by_score(pairs) -> list[tuple[float, frozenset]]:
    levels: dict[float, set] = {}
    for score, product in pairs:
        levels.setdefault(round(score, 4), set()).add(product)
    return sorted((score, frozenset(products)) for score, products in levels.items())


def test_missing_photo_is_exit_3(synced, cli, tmp_path, store):
    result = cli("search", "image", tmp_path / "nope.jpg", "--qdrant-path", store)
    assert result.exit_code == 3 and "no such file" in result.stderr


def test_photo_that_is_not_an_image_is_exit_7_and_others_still_searched(synced, cli, dam, tmp_path, store):
    """Some inputs failed: 7, as for indexer sync; every input failed: 3."""
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello")
    result = cli("search", "image", bad, dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--json")
    assert result.exit_code == 7
    assert "notes.jpg: not an image" in result.stderr and "Traceback" not in result.output
    assert len(json.loads(result.stdout)) == 1
    only_bad = cli("search", "image", bad, tmp_path / "nope.jpg", "--qdrant-path", store, "--json")
    assert only_bad.exit_code == 3 and "notes.jpg: not an image" in only_bad.stderr and "nope.jpg" in only_bad.stderr


def test_search_without_a_collection_says_how_to_make_one(cli, dam, store):
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store)
    assert result.exit_code == 3 and "indexer sync" in result.stderr


def test_filter_that_matches_nothing_says_so(synced, cli, dam, store):
    result = cli(
        "search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--filter", "category=nothing-like-it"
    )
    assert result.exit_code == 0 and "no product matches" in result.stdout


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_unknown_device_is_a_usage_error(synced, cli, dam, store, device):
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--device", device)
    assert result.exit_code == 2 and "use auto, cpu, cuda" in result.output


def test_bad_filter_syntax_is_a_usage_error(synced, cli, dam, store):
    result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--filter", "category")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_the_schema_doc_gives_other_services_the_formula_search_runs():
    import re
    from pathlib import Path

    schema_doc = (Path(__file__).parent.parent / "docs" / "schema.md").read_text()
    [block] = [b for b in re.findall(r"```json\n(.*?)```", schema_doc, re.S) if b.lstrip().startswith('{"formula"')]
    assert json.loads(block) == formula(np.array([42.0, 12.5, -3.1]), 0.05, 20.0)
