"""The commands' own rules: defaults from the environment through indexer/settings.py, settings shown
without their secrets, and a --help that loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RED = Path("generated") / "RED-BAG.png"


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("CATALOGUE_RUNTIME", "tpu", ("search", "image", "photo.jpg")),  # refused by the setting
        ("CATALOGUE_PORT", "99999", ("search", "serve")),  # a whole number, refused by the option's range
        ("CATALOGUE_MAX_DELETE", "lots", ("indexer", "sync", "dam")),  # refused by the option's parser
        ("CATALOGUE_COLLECTION", "bad/name", ("indexer", "info")),
    ],
)
def test_a_bad_environment_value_is_exit_2_in_one_line_naming_the_variable(cli, store, variable, value, command):
    program, *args = command
    result = cli(program, *args, "--qdrant-path", store, env={variable: value})
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"Error: {variable}") and "Traceback" not in result.output
    assert not Path(store).exists()  # refused before anything was opened


def test_a_flag_given_wins_over_its_variable(cli, store, tmp_path):
    result = cli(
        "search", "image", tmp_path / "nope.jpg", "--runtime", "auto", "--qdrant-path", store, env={"CATALOGUE_RUNTIME": "tpu"}
    )
    assert result.exit_code == 3 and "no such file" in result.stderr  # the variable was never read


def test_the_environment_gives_the_defaults(synced, cli, store, monkeypatch):
    monkeypatch.setenv("CATALOGUE_QDRANT_PATH", store)
    assert json.loads(cli("indexer", "info", "--json").stdout)["images"] == 16
    other = cli("indexer", "info", env={"CATALOGUE_COLLECTION": "other"})
    assert other.exit_code == 3 and "no collection 'other'" in other.stderr


def test_info_shows_the_settings_in_effect_and_never_a_secret(synced, cli, store):
    secrets = {"CATALOGUE_API_KEY": "s3cret-api", "CATALOGUE_FEEDBACK_KEY": "s3cret-staff", "QDRANT_API_KEY": "s3cret-qdrant"}
    env = {**secrets, "CATALOGUE_WORKERS": "3"}
    shown = cli("indexer", "info", "--qdrant-path", store, "--json", env=env)
    assert shown.exit_code == 0, shown.output
    settings = json.loads(shown.stdout)["settings"]
    assert settings["workers"] == {"value": 3, "env": "CATALOGUE_WORKERS", "source": "CATALOGUE_WORKERS"}
    assert settings["port"] == {"value": 8000, "env": "CATALOGUE_PORT", "source": "default"}
    assert {settings[name]["value"] for name in ("api_key", "feedback_key", "qdrant_api_key")} == {"set"}
    table = cli("indexer", "info", "--qdrant-path", store, env=env)
    assert table.exit_code == 0 and "CATALOGUE_WORKERS" in table.stdout and "CATALOGUE_API_KEY" in table.stdout
    for result in (shown, table):
        assert not any(secret in result.output for secret in secrets.values())
    unset = json.loads(cli("indexer", "info", "--qdrant-path", store, "--json").stdout)["settings"]
    assert unset["api_key"]["value"] is None


def test_help_loads_no_model_library():
    """--help is instant: no torch, transformers, PIL, OpenCV or scikit-learn."""
    script = (
        "import sys\n"
        "from catalogue_cli import indexer, search\n"
        "for main, args in ((indexer.main, ['--help']), (search.main, ['--help']), (search.main, ['serve', '--help']),"
        " (indexer.main, ['sync', '--help'])):\n"
        "    try:\n        main(args)\n    except SystemExit as exit:\n        assert not exit.code, exit.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'PIL', 'cv2', 'sklearn', 'qdrant_client', 'onnxruntime') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_both_commands_run_as_modules(tmp_path):
    for module in ("catalogue_cli.indexer", "catalogue_cli.search"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0 and "version" in done.stdout, done.stderr
