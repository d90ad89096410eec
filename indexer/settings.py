"""Every setting the environment can give, read in one place with one rule.

Each setting has a name, the variable that sets it, a parser and a default.
A value that does not parse is an `OptionError` naming the variable (exit 2):
never ignored, never a silent fallback to the default. An empty variable is
the default. Values are read when asked for, not cached, so a variable set
between two calls (a test, a re-read at start-up) is seen.

Command-line options take their defaults from here (a flag given wins over
the variable); library code asks `get(NAME)`. Nothing else reads `os.environ`.
Secrets (keys) are never shown: `effective()` says only whether one is set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import OptionError


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any  # a value, or a function of nothing (a default that depends on other settings)
    help: str
    secret: bool = False
    blank_is_value: bool = False  # an empty variable means something (CUDA_VISIBLE_DEVICES="": no GPU)

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


# -- parsers: each raises ValueError with what it expected ------------------------------------


def text(value: str) -> str:
    return value


def path(value: str) -> Path:
    return Path(value).expanduser()


def whole(minimum: int = 0, example: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or int(value) < minimum or (maximum is not None and int(value) > maximum):
            span = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise ValueError(f"expected a whole number {span}, e.g. {example}")
        return int(value)

    return parse


def number(minimum: float = 0.0, example: float = 1.0, maximum: float = float("inf")) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            parsed = float(value)
        except ValueError:
            parsed = float("nan")
        if not minimum <= parsed <= maximum or parsed == float("inf"):  # also refuses NaN
            span = f"from {minimum:g} to {maximum:g}" if maximum != float("inf") else f"of at least {minimum:g}"
            raise ValueError(f"expected a number {span}, e.g. {example:g}")
        return parsed

    return parse


def choice(*values: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in values:
            raise ValueError(f"expected one of {', '.join(values)}")
        return value

    return parse


def names(value: str) -> tuple[str, ...]:
    """A comma-separated list of names (blanks dropped), in order, each once."""
    return tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))


def device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
    return value


def _data_home() -> Path:
    return get("data_home") or Path.home() / ".local" / "share"


def _cache_home() -> Path:
    return get("cache_home") or Path.home() / ".cache"


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        # Where things are
        Setting(
            "qdrant_path",
            "CATALOGUE_QDRANT_PATH",
            path,
            lambda: _data_home() / "catalogue-indexer" / "qdrant",
            "the embedded store's folder",
        ),
        Setting("qdrant_url", "QDRANT_URL", text, None, "a Qdrant server instead of the embedded store"),
        Setting("qdrant_api_key", "QDRANT_API_KEY", text, None, "the Qdrant server's key", secret=True),
        Setting("collection", "CATALOGUE_COLLECTION", text, "catalogue", "the collection"),
        Setting(
            "cache",
            "CATALOGUE_CACHE",
            path,
            lambda: _cache_home() / "catalogue-indexer" / "onnx",
            "where models exported to ONNX are kept",
        ),
        Setting(
            "feedback_path", "CATALOGUE_FEEDBACK_PATH", path, None, "the feedback stores' folder (default: beside the store)"
        ),
        Setting("data_home", "XDG_DATA_HOME", path, None, "the user's data folder"),
        Setting("cache_home", "XDG_CACHE_HOME", path, None, "the user's cache folder"),
        # Models
        Setting("model", "CATALOGUE_MODEL", text, None, "the model of a new collection (default: FashionCLIP)"),
        Setting("device", "CATALOGUE_DEVICE", device, "auto", "where models run: auto, cpu, cuda, cuda:N, mps"),
        Setting("runtime", "CATALOGUE_RUNTIME", choice("auto", "torch", "onnx"), "auto", "how models run"),
        Setting("dtype", "CATALOGUE_DTYPE", choice("auto", "fp32", "fp16", "bf16"), "auto", "torch's precision"),
        Setting("cuda_visible_devices", "CUDA_VISIBLE_DEVICES", text, None, "the GPUs torch may see", blank_is_value=True),
        Setting(
            "locate",
            "CATALOGUE_LOCATE",
            choice("centre", "none", "proposals", "owlv2"),
            "centre",
            "how a photo's product is found",
        ),
        # Sync
        Setting("hnsw_threshold", "CATALOGUE_HNSW_THRESHOLD", whole(1, 20000), None, "a new collection's HNSW threshold"),
        Setting("shard", "CATALOGUE_SHARD", text, None, "this worker's shard, I/N"),
        Setting("max_delete", "CATALOGUE_MAX_DELETE", text, "50%", "the most of a collection one sync may delete"),
        # Limits
        Setting("max_pixels", "CATALOGUE_MAX_PIXELS", whole(1, 100_000_000), 100_000_000, "images above are refused"),
        Setting("max_file_mb", "CATALOGUE_MAX_FILE_MB", whole(1, 256), 256, "files above are refused (MB)"),
        Setting("decode_budget_mb", "CATALOGUE_DECODE_BUDGET_MB", whole(1, 512), 512, "memory of decodes at once (MB)"),
        Setting(
            "disk_reserve_mb",
            "CATALOGUE_DISK_RESERVE_MB",
            whole(0, 64),
            64,
            "free disk the embedded store never writes into (MB)",
        ),
        Setting("max_store_views", "CATALOGUE_MAX_STORE_VIEWS", whole(0, 10), 10, "store views kept per product"),
        Setting(
            "refit_after",
            "CATALOGUE_REFIT_AFTER",
            whole(0, 30),
            30,
            "confirmed or corrected answers before search serve refits the confidence on them (0: never)",
        ),
        Setting("refit_every", "CATALOGUE_REFIT_EVERY", whole(1, 10), 10, "new such answers before it refits again"),
        # search serve
        Setting("host", "CATALOGUE_HOST", text, "127.0.0.1", "the address search serve listens on"),
        Setting("port", "CATALOGUE_PORT", whole(1, 8000, 65535), 8000, "its port"),
        Setting("workers", "CATALOGUE_WORKERS", whole(1, 4, 64), 4, "searches at once"),
        Setting("queue", "CATALOGUE_QUEUE", whole(0, 16, 10_000), 16, "searches waiting beyond them"),
        Setting("max_upload_mb", "CATALOGUE_MAX_UPLOAD_MB", number(0.01, 25, 1024), 25.0, "the largest upload (MB)"),
        Setting(
            "upload_budget_mb",
            "CATALOGUE_UPLOAD_BUDGET_MB",
            number(0.01, 128, 65536),
            128.0,
            "bytes all uploads in flight may hold together (MB)",
        ),
        Setting(
            "read_timeout",
            "CATALOGUE_READ_TIMEOUT_S",
            number(0.1, 30, 3600),
            30.0,
            "seconds a client has to send a whole request body",
        ),
        Setting(
            "display",
            "CATALOGUE_DISPLAY",
            names,
            (),
            "the manifest fields on the page's cards, the first as the title (none: the default rule)",
        ),
        Setting("api_key", "CATALOGUE_API_KEY", text, None, "the key every /v1/ route asks for", secret=True),
        Setting("feedback_key", "CATALOGUE_FEEDBACK_KEY", text, None, "the key /v1/feedback asks for", secret=True),
        Setting("metrics_key", "CATALOGUE_METRICS_KEY", text, None, "the key /metrics asks for", secret=True),
        Setting("log_format", "CATALOGUE_LOG_FORMAT", choice("text", "json"), "text", "search serve's log lines"),
    )
}


def get(name: str) -> Any:
    """The setting's value: its variable parsed, or its default when the variable is unset (or empty)."""
    setting = SETTINGS[name]
    raw = _raw(setting)
    if raw is None:
        return setting.default_value()
    try:
        return setting.parse(raw)
    except ValueError as exc:
        shown = "(hidden)" if setting.secret else repr(raw[:80])
        raise OptionError(f"{setting.env}={shown}: {exc}") from None


def check() -> None:
    """Parse every setting: the first bad variable is an OptionError, before any work starts."""
    for name in SETTINGS:
        get(name)


def source(name: str) -> str:
    """Where a setting's value comes from: its variable, or the default."""
    return "default" if _raw(SETTINGS[name]) is None else setting_env(name)


def _raw(setting: Setting) -> str | None:
    """The variable's text, or None where the default applies (unset; empty, unless empty means something)."""
    raw = os.environ.get(setting.env)
    if raw is None:
        return None
    raw = raw.strip()
    return raw if raw or setting.blank_is_value else None


def setting_env(name: str) -> str:
    return SETTINGS[name].env


def effective() -> dict[str, dict]:
    """Every setting as it is now, with its variable and where the value comes from; secrets say only
    whether they are set."""
    shown = {}
    for name, setting in SETTINGS.items():
        value = get(name)
        if setting.secret:
            value = "set" if value else None
        elif isinstance(value, Path):
            value = str(value)
        shown[name] = {"value": value, "env": setting.env, "source": source(name)}
    return shown
