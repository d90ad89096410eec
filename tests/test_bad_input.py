"""The fault suite: bad input through the real CLI is one line and an exit code, never a traceback.

Each test builds its situation itself (files, names, options) and checks the
exit code, the one-line message, and what the store holds afterwards.
"""

from __future__ import annotations

import pytest
from conftest import all_points

RED = ("generated", "RED-BAG.png")


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "option",
    [
        ("--alpha", "nan"), ("--alpha", "inf"), ("--alpha", "-1"), ("--threshold", "inf"), ("--threshold", "nan"),
        ("--min-confidence", "nan"), ("--min-confidence", "2"), ("--top-k", "0"), ("--top-k", "1000000"),
        ("--filter", "a[=1"), ("--filter", "category"), ("--filter", "=x"), ("--filter", "meta..x=1"),
    ],
)
def test_bad_search_options_are_refused_up_front(synced, cli, dam, store, option, encode_calls):
    result = cli("search", "image", dam.joinpath(*RED), "--qdrant-path", store, *option)
    message = one_line(result, 2)
    assert option[0].lstrip("-").replace("-", "_") in message.replace("-", "_") or "filter" in message
    assert encode_calls == []  # refused before any model ran


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "x" * 300, ".hidden", "a b"])
def test_bad_collection_names_are_refused_before_anything_loads(cli, dam, store, tiny_clip, name, encode_calls):
    for command in (("indexer", "sync", dam, "--model", tiny_clip), ("search", "image", dam.joinpath(*RED))):
        result = cli(*command, "--qdrant-path", store, "--collection", name)
        one_line(result, 2)
    assert encode_calls == []


def test_qdrant_path_from_the_environment_expands_the_home_folder(cli, dam, tmp_path, tiny_clip, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CATALOGUE_QDRANT_PATH", "~/stores/q")
    result = cli("indexer", "sync", dam, "--model", tiny_clip)
    assert result.exit_code == 0, result.output
    assert len(all_points(str(tmp_path / "stores" / "q"))) == 16
    assert not (tmp_path / "~").exists()
