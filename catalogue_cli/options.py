"""The option groups the commands share, each declared once; a group hands its command one built object.

    @search_options      options     search.options.SearchOptions (its fields are the defaults)
    @text_search_options options     the same, for a text search (no colour, no confidence)
    @model_options(...)  model       ModelOptions: which model, on which device, runtime and precision
    @locate_options      locate      LocateOptions: how a photo's products are found
    @store_options       store       StoreOptions: the embedded store or a Qdrant server, the collection
    @max_delete_option   max_delete  indexer.sync.DeleteLimit

`search serve`'s own group (`serve_options`) sits beside its command, in serve.py.

A default from the environment comes from indexer/settings.py (`SettingOption`): a flag given wins,
--help names the variable, and a value of it the option refuses is exit 2 naming the variable.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from indexer import settings
from indexer.errors import OptionError
from indexer.store.schema import DEFAULT_COLLECTION, collection_name_problem
from search.options import SearchOptions, make_options


class SettingOption(click.Option):
    """An option whose default is a setting: its variable, else the setting's default (`shown` in --help)."""

    def __init__(self, *args, setting: str, shown: Any = None, only_when_set: bool = False, **kwargs):
        self.setting = settings.SETTINGS[setting]
        fallback = self.setting.default if shown is None else shown

        def default() -> Any:  # only_when_set: None when the variable is unset (the library picks the default)
            return settings.get(setting) if not only_when_set or settings.source(setting) != "default" else None

        super().__init__(*args, default=default, show_default=f"${self.setting.env}, else {fallback}", **kwargs)

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            if ctx.get_parameter_source(self.name) is click.core.ParameterSource.DEFAULT:
                raise OptionError(f"{self.setting.env}: {exc.message}") from None
            raise


def option_group(name: str, build: Callable[..., Any], options: Sequence[Callable]) -> Callable:
    """A decorator that adds `options` to a command, which receives `name`: what `build` makes of their values."""

    def probe() -> None: ...

    for option in options:
        probe = option(probe)
    keys = [param.name for param in probe.__click_params__]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = build(**{key: kwargs.pop(key) for key in keys})
            return command(*args, **kwargs)

        for option in reversed(options):
            run = option(run)
        return run

    return decorate


# -- search -------------------------------------------------------------------------------------------

_SEARCH = {
    "top_k": click.option(
        "--top-k", type=click.IntRange(1), default=SearchOptions.top_k, show_default=True, help="Products to return."
    ),
    "candidates": click.option(
        "--candidates",
        type=click.IntRange(1),
        default=SearchOptions.candidates,
        show_default=True,
        help="Nearest catalogue images to look at (and re-score).",
    ),
    "alpha": click.option(
        "--alpha", type=click.FloatRange(0), default=SearchOptions.alpha, show_default=True, help="Weight of the colour bonus."
    ),
    "threshold": click.option(
        "--threshold",
        type=click.FloatRange(0),
        default=SearchOptions.threshold,
        show_default=True,
        help="CIELAB distance beyond which colour gives no bonus.",
    ),
    "colour": click.option("--no-colour", "no_colour", is_flag=True, help="Rank by cosine only."),
    "filters": click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="KEY=VALUE",
        help="Payload filter, e.g. category='W Bags' or meta.season=SS24; KEY!=VALUE excludes. Repeatable (all must hold).",
    ),
    "store_views": click.option(
        "--no-store-views",
        "no_store_views",
        is_flag=True,
        help="Match catalogue images only, leaving out the store photos staff confirmed (to compare).",
    ),
    "min_confidence": click.option(
        "--min-confidence",
        type=click.FloatRange(0, 1),
        default=SearchOptions.min_confidence,
        show_default=True,
        help="Below this calibrated probability the top answer is flagged 'no confident match'.",
    ),
}


def _search(no_colour: bool = False, no_store_views: bool = False, **values: Any) -> SearchOptions:
    return make_options(colour=not no_colour, store_views=not no_store_views, **values)


search_options = option_group("options", _search, list(_SEARCH.values()))
text_search_options = option_group(
    "options",
    lambda **values: make_options(colour=False, **values),
    [_SEARCH["top_k"], _SEARCH["candidates"], _SEARCH["filters"]],
)


# -- models -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """Which model (None: the collection's) and how it loads."""

    model: str | None = None
    device: str = "auto"
    runtime: str = "auto"
    dtype: str = "auto"

    @property
    def loading(self) -> dict:
        return model_loading(self.device, self.runtime, self.dtype)


def model_loading(device: str, runtime: str, dtype: str = "auto") -> dict:
    """How the commands load models: on the device asked for, through the runtime asked for, exports in the user cache."""
    from indexer.encoders import default_cache_dir

    return {"device": device, "runtime": runtime, "dtype": dtype, "cache_dir": default_cache_dir()}


def _device(_ctx, _param, value: str) -> str:
    """The device's shape is checked here (exit 2), whether it exists when the model loads."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise click.BadParameter(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


_LOADING = [
    click.option(
        "--device",
        cls=SettingOption,
        setting="device",
        callback=_device,
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
    ),
    click.option(
        "--runtime",
        cls=SettingOption,
        setting="runtime",
        type=click.Choice(("auto", "torch", "onnx")),
        help="auto: ONNX Runtime on the CPU (exported once into CATALOGUE_CACHE, ~/.cache/catalogue-indexer/onnx), "
        "torch on a GPU.",
    ),
    click.option(
        "--dtype",
        cls=SettingOption,
        setting="dtype",
        type=click.Choice(("auto", "fp32", "fp16", "bf16")),
        help="Precision of torch models: auto is fp16 on a GPU, fp32 on the CPU (ONNX runs fp32).",
    ),
]
#: --model's help and default, as a search sees it (the collection's model) and as a sync does.
SEARCH_MODEL = ("Must match the collection's model.", "the collection's model")
SYNC_MODEL = (
    "Hugging Face CLIP id or local folder, or an offline model (efficientnet-lite0, efficientnet-lite2); "
    "comma-separate several for an ensemble.",
    "the collection's model, else patrickjohncyh/fashion-clip",
)


def model_options(model: tuple[str, str] | None = SEARCH_MODEL) -> Callable:
    """--model (with `model`'s help and default; None: no --model, the collection's) and how models load."""
    options = list(_LOADING)
    if model is not None:
        help_text, shown = model
        options.insert(0, click.option("--model", cls=SettingOption, setting="model", shown=shown, help=help_text))
    return option_group("model", ModelOptions, options)


# -- locate -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocateOptions:
    """How a photo's products are found: the localiser's name and its options."""

    localiser: str = "centre"
    detector_options: dict = field(default_factory=dict)


def _locate(locate: str, detector: str | None, prompts: tuple[str, ...], max_products: int) -> LocateOptions:
    options: dict = {"max_regions": max_products}
    if locate == "owlv2":
        from search.detect import DEFAULT_DETECTOR, Prompt

        options["model"] = detector or DEFAULT_DETECTOR
        if prompts:
            options["prompts"] = tuple(Prompt.parse(p) for p in prompts)
    elif detector or prompts:
        raise click.UsageError("--detector and --prompt only apply to --locate owlv2")
    return LocateOptions(locate, options)


locate_options = option_group(
    "locate",
    _locate,
    [
        click.option(
            "--locate",
            cls=SettingOption,
            setting="locate",
            type=click.Choice(["centre", "none", "proposals", "owlv2"]),
            help="How to find the product: centre views + cut-out, none (whole photo), proposals (model-free, "
            "several products), owlv2 (detector, several products). For search serve, the default: a request may "
            "ask for centre, none or proposals.",
        ),
        click.option(
            "--detector",
            default=None,
            metavar="ID_OR_PATH",
            help="OWLv2 checkpoint for --locate owlv2 [default: google/owlv2-base-patch16-ensemble].",
        ),
        click.option(
            "--prompt",
            "prompts",
            multiple=True,
            metavar="TEXT[=CATEGORY]",
            help="What --locate owlv2 looks for, e.g. 'a handbag=W Bags' (searched within that category). Repeatable.",
        ),
        click.option(
            "--max-products",
            type=click.IntRange(1),
            default=5,
            show_default=True,
            help="Most products reported per photo by proposals/owlv2.",
        ),
    ],
)


# -- store --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreOptions:
    """The embedded store's folder (None: the default one) or a Qdrant server, and the collection."""

    path: str | None = None
    url: str | None = None
    collection: str = DEFAULT_COLLECTION
    api_key: str | None = None  # the Qdrant server's


def _store(qdrant_path=None, qdrant_url=None, collection: str = DEFAULT_COLLECTION) -> StoreOptions:
    if qdrant_path and qdrant_url:
        raise click.UsageError("give --qdrant-path or --qdrant-url, not both")
    return StoreOptions(str(qdrant_path) if qdrant_path else None, qdrant_url, collection, settings.get("qdrant_api_key"))


def _collection(_ctx, _param, value: str) -> str:
    problem = collection_name_problem(value)
    if problem:
        raise click.BadParameter(f"{value[:80]!r}: {problem}")
    return value


def _qdrant_path(help_text: str) -> Callable:
    return click.option(
        "--qdrant-path",
        cls=SettingOption,
        setting="qdrant_path",
        only_when_set=True,
        shown="~/.local/share/catalogue-indexer/qdrant",
        type=click.Path(file_okay=False),
        help=help_text,
    )


store_options = option_group(
    "store",
    _store,
    [
        _qdrant_path("Embedded Qdrant folder."),
        click.option(
            "--qdrant-url",
            cls=SettingOption,
            setting="qdrant_url",
            shown="the embedded store",
            help="Qdrant server URL instead of the embedded store; API key from QDRANT_API_KEY.",
        ),
        click.option("--collection", cls=SettingOption, setting="collection", callback=_collection, help="Collection name."),
    ],
)
#: `indexer migrate`: the embedded store only.
embedded_store_option = option_group("store", _store, [_qdrant_path("Embedded store to convert.")])


# -- deleting -----------------------------------------------------------------------------------------


def _delete_limit(_ctx, _param, value: str):
    from indexer.sync import DeleteLimit

    try:
        return DeleteLimit.parse(value)
    except OptionError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--max-delete {value[:40]!r}: ")) from None


#: How much of the collection one sync (or --watch pass) may delete; `indexer sync` and `search serve`.
max_delete_option = click.option(
    "--max-delete",
    cls=SettingOption,
    setting="max_delete",
    metavar="SHARE|COUNT",
    callback=_delete_limit,
    help="Refuse (exit 2, nothing changed) to delete more of the collection than this, a share (50%) or a number "
    "of images: a folder that lost most of its files is more often a wrong mount than a retired catalogue. "
    "100% to proceed.",
)
