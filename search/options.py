"""Search options: one definition and one validation, shared by the CLI, the HTTP API and the page.

A bad value is refused before anything is loaded, with one line that names
the option (`OptionError`: exit 2 on the command line, 422 over HTTP). NaN
and infinities are refused: they would turn every score into NaN and make
the JSON output invalid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from indexer.errors import OptionError
from indexer.store import Filters
from indexer.store.schema import NOT_STORE_VIEWS
from search.confidence import DEFAULT_MIN_CONFIDENCE
from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD

MAX_TOP_K = 1000
MAX_CANDIDATES = 10_000
MAX_ALPHA = 10.0
MAX_THRESHOLD = 1000.0
#: A payload path: `category`, `meta.season`. No brackets, quotes or spaces.
FILTER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
MAX_FILTER_VALUE = 512


@dataclass(frozen=True)
class SearchOptions:
    """What one search asks for. Its field defaults are the defaults of every caller: the CLIs, the HTTP
    routes and the hand-off take them from here."""

    top_k: int = 10
    candidates: int = 100
    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    colour: bool = True
    filters: Filters = ()
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    store_views: bool = True  # False: catalogue images only (store photos confirmed by staff left out)

    @property
    def query_filters(self) -> Filters:
        """The payload filters a query runs with: the user's, and store views left out when asked."""
        return self.filters if self.store_views else (*self.filters, *NOT_STORE_VIEWS)


def make_options(
    *,
    top_k: int = SearchOptions.top_k,
    candidates: int = SearchOptions.candidates,
    alpha: float = SearchOptions.alpha,
    threshold: float = SearchOptions.threshold,
    colour: bool = SearchOptions.colour,
    filters: Iterable[str] | Filters = (),
    min_confidence: float = SearchOptions.min_confidence,
    store_views: bool = SearchOptions.store_views,
) -> SearchOptions:
    """Checked options; `filters` as KEY=VALUE strings or (key, value) pairs. Candidates are at least top_k."""
    top_k = _integer("top_k", top_k, 1, MAX_TOP_K)
    candidates = _integer("candidates", candidates, 1, MAX_CANDIDATES)
    return SearchOptions(
        top_k=top_k,
        candidates=max(candidates, top_k),
        alpha=_number("alpha", alpha, 0.0, MAX_ALPHA),
        threshold=_number("threshold", threshold, 0.0, MAX_THRESHOLD),
        colour=bool(colour),
        filters=parse_filters(filters),
        min_confidence=_number("min_confidence", min_confidence, 0.0, 1.0),
        store_views=bool(store_views),
    )


def parse_filters(values: Iterable[str] | Filters) -> Filters:
    """KEY=VALUE (must hold) or KEY!=VALUE (must not) strings, or pairs, as the store's filters;
    a key is a payload path like meta.season."""
    parsed = []
    for value in values:
        if isinstance(value, str):
            key, sep, wanted = value.partition("=")
            if not sep:
                raise OptionError(f"filter {value[:80]!r}: expected KEY=VALUE or KEY!=VALUE, e.g. category=Bags")
            key = key.strip()
            key = f"!{key[:-1].strip()}" if key.endswith("!") else key
        else:
            key, wanted = value
            key = key.strip()
        if not FILTER_KEY.fullmatch(key.removeprefix("!")):
            raise OptionError(f"filter key {key[:80]!r}: use a payload field such as category or meta.season")
        if len(wanted) > MAX_FILTER_VALUE:
            raise OptionError(f"filter {key}: the value is longer than {MAX_FILTER_VALUE} characters")
        parsed.append((key, wanted))
    return tuple(parsed)


def _integer(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(f"{name} {value!r}: expected a whole number from {low} to {high:,}")
    return value


def _number(name: str, value, low: float, high: float) -> float:
    try:
        if isinstance(value, bool):  # float(True) is 1.0: a yes/no is not a number
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} {value!r}: expected a number from {low:g} to {high:g}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise OptionError(f"{name} {value!r}: expected a finite number from {low:g} to {high:g}")
    return number
