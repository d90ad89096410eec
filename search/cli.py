"""`search`: name the catalogue product in store photos."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.cli_common import emit_json, open_catalogue, reports_errors, store_options, table
from indexer.encoders import MODEL_ENV_VAR
from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="catalogue-indexer")
def main() -> None:
    """Find which catalogue product a photo shows.

    \b
    Examples:
      search image shelf.jpg
      search image shelf.jpg --top-k 5 --filter category="W Bags" --json
    """


def ranking_options(command):
    """Options shared by every command that ranks products."""
    decorators = [
        click.option("--top-k", type=click.IntRange(1), default=10, show_default=True, help="Products to return."),
        click.option("--candidates", type=click.IntRange(1), default=100, show_default=True, help="Nearest catalogue images to re-score."),
        click.option("--alpha", type=click.FloatRange(0), default=DEFAULT_ALPHA, show_default=True, help="Weight of the colour bonus."),
        click.option("--threshold", type=click.FloatRange(0), default=DEFAULT_THRESHOLD, show_default=True, help="CIELAB distance beyond which colour gives no bonus."),
        click.option("--no-colour", "no_colour", is_flag=True, help="Rank by cosine only."),
        click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE", help="Payload filter, e.g. category='W Bags' or meta.season=SS24. Repeatable (all must hold)."),
        click.option("--model", envvar=MODEL_ENV_VAR, help=f"Must match the collection's model; default: the collection's [env {MODEL_ENV_VAR}]."),
        click.option("--device", default="auto", show_default=True, help="cuda, mps, cpu or auto."),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _parse_filters(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE, e.g. category=Bags", param_hint="--filter")
        parsed.append((key.strip(), wanted))
    return tuple(parsed)


def _options(top_k, candidates, alpha, threshold, no_colour, filters):
    from search.query import SearchOptions

    return SearchOptions(
        top_k=top_k, candidates=max(candidates, top_k), alpha=alpha, threshold=threshold,
        colour=not no_colour, filters=_parse_filters(filters),
    )


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@ranking_options
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (a list, one entry per photo).")
@reports_errors
def image(photos, top_k, candidates, alpha, threshold, no_colour, filters, model, device, qdrant_path, qdrant_url, collection, as_json) -> None:
    """Rank catalogue products for each photo in PHOTOS.

    Each row is a product with its best-matching catalogue image: final
    score = cosine + colour bonus (see --alpha, --threshold).

    \b
    Exit codes: 0 done, 3 a photo is missing or not an image (the others are
    still searched), 4 store unavailable, 5 model mismatch.
    """
    from indexer.errors import BadInputError
    from search.query import Searcher

    options = _options(top_k, candidates, alpha, threshold, no_colour, filters)
    missing = [p for p in photos if not p.is_file()]
    if len(missing) == len(photos):
        raise BadInputError(f"{missing[0]}: no such file")
    catalogue = open_catalogue(qdrant_path, qdrant_url, collection)
    searcher = Searcher(catalogue, model=model, device=device)
    results, failures = [], 0
    for photo in photos:
        try:
            results.append(searcher.search_file(photo, options))
        except BadInputError as exc:
            click.echo(f"Error: {exc}", err=True)
            failures += 1
    if as_json:
        emit_json([r.to_dict() for r in results])
    else:
        for result in results:
            _print_result(result, multiple=len(photos) > 1)
    if failures:
        raise SystemExit(BadInputError.exit_code)


def _print_result(result, multiple: bool) -> None:
    if multiple:
        click.echo(f"\n{result.query}")
    rows = [
        (m.rank, m.product_id, m.score, m.cosine, m.colour_bonus, m.image or m.path)
        for m in result.matches
    ]
    click.echo(table(("rank", "product", "score", "cosine", "colour", "reference image"), rows, align="rlrrrl"))
    click.echo(f"({result.timings['total'] * 1000:.0f} ms)", err=True)


if __name__ == "__main__":
    main()
