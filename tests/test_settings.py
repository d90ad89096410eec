"""Settings from the environment: one rule everywhere, a bad value is exit 2 with one line naming the variable.

Each kind of setting is tried where a user meets it (a limit on `indexer sync`,
the store-view cap on `indexer feedback add`, a limit on `search image`), and
the table itself is checked: empty means the default, secrets never show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import all_points

from indexer import settings
from indexer.errors import OptionError

RED = ("generated", "RED-BAG.png")


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CATALOGUE_MAX_PIXELS", "abc"),  # was ignored: the default applied
        ("CATALOGUE_MAX_PIXELS", "0"),  # was taken: every image refused
        ("CATALOGUE_MAX_FILE_MB", "-1"),  # was ignored
        ("CATALOGUE_DISK_RESERVE_MB", "lots"),  # was ignored
        ("CATALOGUE_DECODE_BUDGET_MB", "0"),
    ],
)
def test_a_bad_limit_stops_sync_before_anything_is_written(cli, dam, store, tiny_clip, variable, value, encode_calls):
    result = cli("indexer", "sync", dam, "--model", tiny_clip, "--qdrant-path", store, env={variable: value})
    message = one_line(result, 2)
    assert message.startswith("Error: ") and f"{variable}={value!r}" in message and "expected a whole number" in message
    assert encode_calls == []
    assert stored(store) == []


def stored(store: str) -> list:
    """The collection's points; none when the sync never made it."""
    from indexer.store import open_store

    if not Path(store).exists():
        return []
    with open_store(path=store) as opened:
        if not opened.collection("catalogue").exists():
            return []
    return all_points(store)


def test_a_bad_store_view_cap_stops_feedback_add_and_records_nothing(synced, cli, dam, store):
    add = ("indexer", "feedback", "add", dam.joinpath(*RED), "--product", "RED-BAG", "--qdrant-path", store)
    result = cli(*add, env={"CATALOGUE_MAX_STORE_VIEWS": "x"})
    assert "CATALOGUE_MAX_STORE_VIEWS='x'" in one_line(result, 2)
    listed = cli("indexer", "feedback", "list", "--qdrant-path", store, "--json")
    assert json.loads(listed.stdout)["entries"] == []


def test_a_bad_limit_stops_a_search_with_one_line(synced, cli, dam, store):
    result = cli("search", "image", dam.joinpath(*RED), "--qdrant-path", store, env={"CATALOGUE_MAX_FILE_MB": "1.5"})
    assert "CATALOGUE_MAX_FILE_MB='1.5'" in one_line(result, 2)


def test_an_empty_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("CATALOGUE_MAX_PIXELS", "  ")
    monkeypatch.setenv("CATALOGUE_COLLECTION", "")
    assert settings.get("max_pixels") == settings.SETTINGS["max_pixels"].default
    assert settings.get("collection") == "catalogue"
    assert settings.source("collection") == "default"


def test_an_empty_cuda_visible_devices_hides_every_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert settings.get("cuda_visible_devices") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert settings.get("cuda_visible_devices") == ""  # CUDA's meaning: no GPU, not "unset"
    assert settings.source("cuda_visible_devices") == "CUDA_VISIBLE_DEVICES"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("port", "0"),
        ("port", "70000"),
        ("workers", "four"),
        ("max_upload_mb", "nan"),
        ("max_upload_mb", "inf"),
        ("upload_budget_mb", "0"),
        ("read_timeout", "-3"),
        ("runtime", "tensorflow"),
        ("dtype", "fp8"),
        ("device", "gpu"),
        ("locate", "everywhere"),
        ("hnsw_threshold", "0"),
    ],
)
def test_every_kind_of_bad_value_is_an_option_error_naming_the_variable(monkeypatch, name, value):
    variable = settings.setting_env(name)
    monkeypatch.setenv(variable, value)
    with pytest.raises(OptionError, match=f"^{variable}=") as raised:
        settings.get(name)
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)
    with pytest.raises(OptionError, match=variable):
        settings.check()


def test_secrets_never_show(monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-qdrant")
    monkeypatch.setenv("CATALOGUE_API_KEY", "s3cret-api")
    shown = json.dumps(settings.effective())
    assert "s3cret" not in shown
    assert settings.effective()["api_key"] == {"value": "set", "env": "CATALOGUE_API_KEY", "source": "CATALOGUE_API_KEY"}


def test_paths_expand_the_home_folder_and_follow_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CATALOGUE_QDRANT_PATH", raising=False)
    monkeypatch.delenv("CATALOGUE_CACHE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert settings.get("qdrant_path") == tmp_path / "data" / "catalogue-indexer" / "qdrant"
    assert settings.get("cache") == tmp_path / "cache" / "catalogue-indexer" / "onnx"
    monkeypatch.setenv("CATALOGUE_QDRANT_PATH", "~/q")
    assert settings.get("qdrant_path") == tmp_path / "q"
