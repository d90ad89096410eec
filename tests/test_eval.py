"""`search eval`: metrics a user can trust, sweeps that don't re-encode, an HTML report that renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import studio_shot

from search.evaluate import summarise

# The tiny random model recognises only identical pixels, so these tests search whole photos:
# localisation (crops, cut-outs) is tested with real weights in test_efficientnet.py.
WHOLE = ("--locate", "none")


def test_summary_metrics_on_hand_computed_ranks():
    m = summarise([1, 3, None, 12], ks=(1, 5, 10))
    assert (m["top1"], m["top5"], m["top10"]) == (0.25, 0.5, 0.5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 4)
    assert m["median_rank"] == 3  # of the photos whose product was found


@pytest.fixture
def labelled(cli, dam, store, tiny_clip, tmp_path):
    """A synced catalogue, a folder of query photos and a ground truth exercising every rule."""
    cli(
        "indexer",
        "sync",
        dam,
        "--model",
        tiny_clip,
        "--qdrant-path",
        store,
        "--manifest",
        Path(__file__).parent / "data" / "products.csv",
        "--manifest-column",
        "MMC=product_id",
        "--manifest-column",
        "Product_BusinessUnitDesc=category",
    )
    queries = tmp_path / "queries"
    queries.mkdir()
    # Exact copies of catalogue images: the tiny model finds these at rank 1.
    shutil.copy(dam / "M3550HLEZJM900.jpeg", queries / "bag.jpg")
    # The catalogue holds two colour codes with pixel-identical photos: either is a right answer.
    shutil.copy(dam / "KCQ858SBXS70K.jpeg", queries / "shoe.jpg")
    shutil.copy(dam / "generated" / "RED-BAG.png", queries / "red.png")
    studio_shot(queries / "unlabelled.png", (5, 5, 5))
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "query,reference\n"
        "bag.jpg,M3550HLEZJM900.jpeg\n"  # by image file name
        "shoe.jpg,KCQ858SBXS89K\n"  # by product id: the wrong shoe ...
        "shoe.jpg,KCQ858SBXS70K.jpeg\n"  # ... and the right one: either counts
        "red.png,generated/RED-BAG.png\n"  # by relative path
        "red.png,NOT-IN-CATALOGUE.jpeg\n"  # reported as missing, the other reference still counts
        "ghost.jpg,M9206UMOSM941.jpeg\n"  # no such photo: reported
    )
    return queries, truth


def test_eval_reports_accuracy_ranks_and_what_it_skipped(cli, labelled, store, encode_calls):
    queries, truth = labelled
    result = cli(
        "search", "eval", "--queries", queries, "--ground-truth", truth, "--qdrant-path", store, "--json", "--sweep", *WHOLE
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["queries"] == 3
    per_query = {q["query"]: q for q in data["per_query"]}
    assert set(per_query) == {"bag.jpg", "shoe.jpg", "red.png"}
    for q in per_query.values():
        assert set(q["ranks"].values()) == {1}
    assert per_query["shoe.jpg"]["expected"] == ["KCQ858SBXS89K", "KCQ858SBXS70K"]
    cosine = data["settings"]["cosine only"]
    assert (cosine["top1"], cosine["mrr"], cosine["median_rank"]) == (1.0, 1.0, 1)
    assert cosine["mean_cosine_top1_correct"] == pytest.approx(1.0, abs=1e-4)
    assert cosine["by_category"]["W Bags"]["n"] == 1 and cosine["by_category"]["W Shoes"]["top1"] == 1.0
    assert {s["why"] for s in data["skipped"]} == {"no ground truth", "listed in the ground truth, not in the folder"}
    assert data["missing_references"] == [{"query": "red.png", "reference": "NOT-IN-CATALOGUE.jpeg"}]
    # 2 fixed settings + a 30-pair grid, yet every photo was encoded exactly once.
    assert len(data["settings"]) >= 30 and encode_calls == [1, 1, 1]
    assert data["best"]["setting"] in data["settings"]


def test_eval_ranks_a_confusable_query_honestly(cli, labelled, store, dam):
    """A photo whose expected product is not the nearest: its rank is > 1 and top-1 drops accordingly."""
    queries, truth = labelled
    truth_wrong = truth.parent / "wrong.csv"
    truth_wrong.write_text("query,reference\nbag.jpg,N2002WOMFWD301.jpeg\nred.png,RED-BAG\n")
    data = json.loads(
        cli(
            "search", "eval", "--queries", queries, "--ground-truth", truth_wrong, "--qdrant-path", store, "--json", *WHOLE
        ).stdout
    )
    ranks = {q["query"]: q["ranks"]["cosine only"] for q in data["per_query"]}
    assert ranks["red.png"] == 1 and ranks["bag.jpg"] > 1
    assert data["settings"]["cosine only"]["top1"] == 0.5


def test_eval_table_for_people(cli, labelled, store):
    queries, truth = labelled
    result = cli("search", "eval", "--queries", queries, "--ground-truth", truth, "--qdrant-path", store, "--sweep", *WHOLE)
    assert result.exit_code == 0
    assert "top-1" in result.stdout and "MRR" in result.stdout and "Best of the sweep" in result.stdout
    assert "Per category" in result.stdout
    assert "skipped: unlabelled.png: no ground truth" in result.stderr
    assert "missing reference: red.png: NOT-IN-CATALOGUE.jpeg" in result.stderr


def test_eval_with_bad_inputs_is_exit_3(cli, labelled, store, tmp_path):
    queries, truth = labelled
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("query,reference\nonly-one-column\n")
    assert cli("search", "eval", "--queries", queries, "--ground-truth", bad_csv, "--qdrant-path", store).exit_code == 3
    assert cli("search", "eval", "--queries", tmp_path / "nope", "--ground-truth", truth, "--qdrant-path", store).exit_code in (
        2,
        3,
    )
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("query,reference\nghost.jpg,M3550HLEZJM900.jpeg\n")
    result = cli("search", "eval", "--queries", queries, "--ground-truth", nothing, "--qdrant-path", store)
    assert result.exit_code == 3 and "no photo with usable ground truth" in result.stderr
    (tmp_path / "a-file").write_text("")
    result = cli(
        "search",
        "eval",
        "--queries",
        queries,
        "--ground-truth",
        truth,
        "--qdrant-path",
        store,
        "--report",
        tmp_path / "a-file" / "report.html",
    )
    assert result.exit_code == 3 and "cannot write the report" in result.stderr and "Traceback" not in result.output


def test_report_is_self_contained_html(cli, labelled, store, tmp_path):
    queries, truth = labelled
    report = tmp_path / "out" / "report.html"
    result = cli(
        "search", "eval", "--queries", queries, "--ground-truth", truth, "--qdrant-path", store, "--report", report, *WHOLE
    )
    assert result.exit_code == 0
    page = report.read_text()
    for name in ("bag.jpg", "shoe.jpg", "red.png", "top-1", "MRR"):
        assert name in page
    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    # Each valid reference in a top 10 is framed green: bag, red, and both shoes (both are valid).
    assert page.count("class='match correct'") == 4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_a_real_browser(cli, labelled, store, tmp_path):
    from PIL import Image

    queries, truth = labelled
    report = tmp_path / "report.html"
    cli("search", "eval", "--queries", queries, "--ground-truth", truth, "--qdrant-path", store, "--report", report, *WHOLE)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The green frames of correct matches (#1a9e3a) are on screen, and so are the thumbnails (many colours).
    green = (abs(pixels[..., 0] - 0x1A) < 8) & (abs(pixels[..., 1] - 0x9E) < 8) & (abs(pixels[..., 2] - 0x3A) < 8)
    assert green.sum() > 500
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_confidence_is_a_logistic_of_the_first_products_signals():
    from search.confidence import Calibration, Evidence, signals
    from search.query import Match

    def match(product, score, distance):
        return Match(1, product, score, score, 0.0, distance, "", None)

    ranked = [match("A", 0.8, 10.0), match("B", 0.5, None), match("C", 0.1, None)]  # 10 = half the colour scale
    evidence = Evidence(views=[["A", "B"], ["B", "A"], ["A", "C"]], encoders=[["A", "B"], ["B", "A"]])
    found = signals(ranked, evidence)
    assert found == pytest.approx(
        {"top": 0.8, "margin": 0.3, "views_agree": 2 / 3, "encoders_agree": (1 + 1 / 2) / 2, "colour_agree": 0.5}
    )
    # With A hidden (as if it were not in the catalogue), B answers: first for both encoders and two views.
    assert signals(ranked, evidence, hidden={"A"}) == pytest.approx(
        {"top": 0.5, "margin": 0.4, "views_agree": 2 / 3, "encoders_agree": 1.0, "colour_agree": 0.0}
    )
    calibration = Calibration(weights={"top": 1.0, "margin": 2.0, "views_agree": 3.0}, bias=-1.0, source="test", samples=2)
    # z = 1 * 0.8 + 2 * 0.3 + 3 * 2/3 - 1 = 2.4
    assert calibration.confidence(found) == pytest.approx(1 / (1 + np.exp(-2.4)))
    assert calibration.confidence(None) is None


def test_a_calibration_stored_before_the_agreement_signals_still_reads_top_and_margin():
    from search.confidence import Calibration

    old = Calibration.from_metadata({"weight_top": 1.0, "weight_margin": 2.0, "bias": -1.0, "source": "x", "samples": 4})
    assert dict(old.weights) == {"top": 1.0, "margin": 2.0}
    assert old.confidence({"top": 0.8, "margin": 0.3, "views_agree": 1.0}) == pytest.approx(1 / (1 + np.exp(-0.4)))


def test_calibrated_search_flags_a_product_missing_from_the_catalogue(cli, labelled, store, tmp_path, dam):
    queries, truth = labelled
    result = cli(
        "search", "eval", "--queries", queries, "--ground-truth", truth, "--qdrant-path", store, "--calibrate", "--json", *WHOLE
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["calibrated"]["samples"] == 6 and data["calibrated"]["auc"] == 1.0  # 3 photos, each also with its product hidden
    info = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)
    assert info["calibration"]["samples"] == 6

    known = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--json", *WHOLE)
    assert json.loads(known.stdout)[0]["confident"] is True
    stranger = studio_shot(tmp_path / "not-ours.png", (90, 200, 200), shape="rectangle")
    unknown = cli("search", "image", stranger, "--qdrant-path", store, *WHOLE)
    assert "no confident match" in unknown.stdout
    [entry] = json.loads(cli("search", "image", stranger, "--qdrant-path", store, "--json", *WHOLE).stdout)
    assert entry["confident"] is False and entry["confidence"] < json.loads(known.stdout)[0]["confidence"]


def test_calibration_keeps_an_agreement_signal_only_when_it_predicts_out_of_sample():
    from search.confidence import fit

    rng = np.random.default_rng(0)

    def answers(informative: str):
        samples, groups = [], []
        for photo in range(60):
            for right in (photo % 2 == 0, False):  # as it is, and with its product hidden
                signal = {"top": rng.uniform(0.4, 0.8), "margin": rng.uniform(0, 0.1), "views_agree": rng.uniform(0, 1)}
                signal["encoders_agree"] = rng.uniform(0, 1)
                signal["colour_agree"] = rng.uniform(0, 1)
                signal[informative] = (0.9 if right else 0.1) + rng.normal(0, 0.15 if informative == "views_agree" else 0.02)
                samples.append((signal, right))
                groups.append(photo)
        return samples, groups

    samples, groups = answers("views_agree")
    calibration, quality = fit(samples, source="test", groups=groups)
    assert "views_agree" in quality["signals"] and calibration.weights["views_agree"] > 0
    assert set(quality["cross_validated_auc"]) >= {"top, margin", "top, margin, views_agree"}
    # Only the margin tells right from wrong: no agreement signal earns a place.
    samples, groups = answers("margin")
    _, quality = fit(samples, source="test", groups=groups)
    assert quality["signals"] == ["top", "margin"]


def test_a_calibration_that_weighs_view_agreement_gets_it_from_each_search(synced, cli, store, dam):
    """A studio shot is seen the same from every view: with only views_agree weighed, it is sure."""
    from conftest import open_store

    def confidence_with(weights: dict) -> float:
        with open_store(store) as opened:
            calibration = {"weights": weights, "bias": -5.0, "source": "test", "samples": 2}
            opened.collection("catalogue").update_metadata(calibration=calibration)
        result = cli("search", "image", dam / "generated" / "RED-BAG.png", "--qdrant-path", store, "--json")
        return json.loads(result.stdout)[0]["confidence"]

    # Four views (whole, two centre crops, the cut-out): most of them name the same product first.
    agreeing = [1 / (1 + np.exp(-(10.0 * k / 4 - 5.0))) for k in (3, 4)]
    sure = confidence_with({"top": 0.0, "views_agree": 10.0})
    assert any(sure == pytest.approx(value, abs=1e-3) for value in agreeing), sure
    assert confidence_with({"top": 0.0}) == pytest.approx(1 / (1 + np.exp(5.0)), abs=1e-3)
