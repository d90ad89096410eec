"""One ranking path: `search image`, the server's search, store views and `search eval` all rank a located
product through `Searcher.rankings`, so what eval measures is what a user is shown."""

from __future__ import annotations

import ast
import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA

from search.confidence import BUILT_IN
from search.query import Searcher

DEV = Path("/work/shared/data/store-photos-dev")
SAMPLE_DAM = Path("/work/shared/data/dam")
PRODUCT_CODE = [p for package in ("indexer", "search") for p in (Path(__file__).parents[1] / package).rglob("*.py")]
needs_dev_photos = pytest.mark.skipif(not (DEV / "ground_truth.csv").is_file(), reason=f"no dev photos in {DEV}")


@pytest.fixture
def dev_store(cli, tmp_path, tiny_clip, other_clip, store) -> str:
    """The dev photos' products (their catalogue images) beside the tests' DAM, synced with an ensemble
    of two tiny models: several encoders, so candidates are fused as in production."""
    dam = Path(shutil.copytree(DATA / "dam", tmp_path / "dam"))
    with open(DEV / "ground_truth.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            shutil.copy(SAMPLE_DAM / row["reference"], dam / row["reference"])
    result = cli("indexer", "sync", dam, "--model", f"{tiny_clip},{other_clip}", "--qdrant-path", store, "--json")
    assert result.exit_code == 0, result.output
    return store


@needs_dev_photos
@pytest.mark.parametrize("candidates", ["100", "10"], ids=["more-than-points", "fewer-than-points"])
def test_search_image_and_search_eval_answer_every_dev_photo_alike(cli, dev_store, candidates):
    """Eval's shown setting is search's default: per photo, the same products in the same order with
    the same scores, colours and paths, and the confidence search shows is the one eval's signals give
    (those are rounded to 6 digits, hence the tolerance). The store has fewer points than the default
    candidates, and with `--candidates 10` more points than candidates."""
    photos = sorted(p for p in DEV.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    same = ("--qdrant-path", dev_store, "--candidates", candidates, "--json")
    evaluated = cli("search", "eval", "--queries", DEV, "--ground-truth", DEV / "ground_truth.csv", *same, "-q")
    searched = cli("search", "image", *photos, *same)
    assert evaluated.exit_code == searched.exit_code == 0, evaluated.output + searched.output
    evaluation, answers = json.loads(evaluated.stdout), {Path(a["query"]).name: a for a in json.loads(searched.stdout)}
    assert evaluation["skipped"] == [] and evaluation["queries"] == len(photos) == len(answers) == 16
    [shown] = [name for name in evaluation["per_query"][0]["top"] if name.startswith("colour")]
    for measured in evaluation["per_query"]:
        answer = answers[measured["query"]]
        shown_matches = [{k: v for k, v in m.items() if k != "display"} for m in answer["matches"]]  # the card: not ranking
        assert answer["matches"] == answer["groups"][0]["matches"], measured["query"]
        assert shown_matches == measured["top"][shown], measured["query"]
        assert [m["product_id"] for m in answer["matches"]] == [m["product_id"] for m in measured["top"][shown]]
        assert answer["confidence"] == pytest.approx(BUILT_IN.confidence(measured["top_signals"][shown]), abs=1e-4)


@pytest.fixture
def ranked(monkeypatch) -> list[int]:
    """Counts calls of the one ranking function (how many settings each ranked)."""
    calls: list[int] = []
    original = Searcher.rankings

    def counting(self, features, settings, **kwargs):
        calls.append(len(settings))
        return original(self, features, settings, **kwargs)

    monkeypatch.setattr(Searcher, "rankings", counting)
    return calls


def test_search_image_the_server_and_eval_all_rank_through_one_function(synced, cli, serve, store, dam, tmp_path, ranked):
    photo = dam / "generated" / "RED-BAG.png"
    result = cli("search", "image", photo, "--qdrant-path", store, "--locate", "none", "--json")
    assert result.exit_code == 0 and ranked == [1]

    client = serve()  # its warm-up search ranks too
    before = len(ranked)
    response = client.post("/v1/search", files={"image": ("red.png", photo.read_bytes(), "image/png")})
    assert response.status_code == 200 and ranked[before:] == [1]
    client.__exit__(None, None, None)  # the embedded store is one process at a time: free it for the CLI

    shutil.copy(photo, tmp_path / "red.png")
    (tmp_path / "truth.csv").write_text("query,reference\nred.png,RED-BAG\n")
    before = len(ranked)
    args = ("--queries", tmp_path, "--ground-truth", tmp_path / "truth.csv", "--qdrant-path", store, "--locate", "none")
    result = cli("search", "eval", *args, "--sweep", "--alphas", "0.05,0.1", "--thresholds", "20", "-q", "--json")
    assert result.exit_code == 0, result.output
    # One call per photo: its candidates fetched once, ranked under cosine only, colour, and the sweep's other pair.
    assert ranked[before:] == [3]
    assert json.loads(result.stdout)["per_query"][0]["ranks"] == {
        "cosine only": 1,
        "colour alpha=0.05,threshold=20": 1,
        "alpha=0.1,threshold=20": 1,
    }


def _callers(names: set[str]) -> dict[str, set[str]]:
    """For each function or method name in `names`: the product-code functions that call it."""
    found: dict[str, set[str]] = {name: set() for name in names}
    for path in PRODUCT_CODE:
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call):
                    called = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                    if called in names:
                        found[called].add(f"{path.parent.name}/{path.name}:{function.name}")
    return found


def test_nothing_but_the_one_function_goes_from_candidates_to_a_ranking():
    callers = _callers({"candidates", "evidence", "rank", "rankings"})
    assert callers["candidates"] == {"search/query.py:rankings"}
    assert callers["evidence"] == {"search/query.py:rankings"}
    # Text search ranks a text's candidates (no photo: no colour, no evidence, no confidence).
    assert callers["rank"] == {"search/query.py:rankings", "search/query.py:search_text"}
    assert callers["rankings"] == {
        "search/query.py:search_image",
        "search/evaluate.py:_rank_query",
        "search/views.py:_answer",
    }
