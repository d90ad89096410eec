"""`search`: name the catalogue product in store photos."""

from __future__ import annotations

import time
from pathlib import Path

import click

from catalogue_cli.errors import Commands
from catalogue_cli.evaluate import eval_command
from catalogue_cli.options import (
    LocateOptions,
    ModelOptions,
    StoreOptions,
    locate_options,
    model_options,
    search_options,
    store_options,
    text_search_options,
)
from catalogue_cli.output import emit_json, progress_bar, table
from catalogue_cli.serve import serve
from catalogue_cli.stores import catalogue_or_server, open_catalogue, searcher
from indexer import settings
from indexer.errors import EXIT_PARTIAL, BadInputError


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="catalogue-indexer")
def main() -> None:
    """Find which catalogue product a photo shows.

    \b
    Examples:
      search image shelf.jpg
      search image shelf.jpg --top-k 5 --filter category="W Bags" --json
      search eval --queries photos/ --ground-truth truth.csv --sweep --report eval.html
      search synthesize ./dam synthetic/ --count 300
    """


main.add_command(eval_command)
main.add_command(serve)


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@search_options
@model_options()
@locate_options
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (a list, one entry per photo).")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also print where the time went (start-up, store, models, each stage) on stderr."
)
def image(photos, options, model: ModelOptions, locate: LocateOptions, store: StoreOptions, as_json: bool, verbose: bool):
    """Rank catalogue products for each photo in PHOTOS.

    Each row is a product with its best-matching catalogue image: final
    score = cosine + colour bonus (see --alpha, --threshold). With
    --locate proposals or owlv2, each product found in the photo gets its
    own ranked group, with its box.

    \b
    Exit codes: 0 done, 7 done but some photos are missing or not images
    (each said on stderr; the others are still searched), 3 every photo
    is, 4 store unavailable, 5 model mismatch.
    """
    from catalogue_cli.output import process_age
    from search.cards import with_cards

    started, t0 = process_age(), time.perf_counter()
    missing = [p for p in photos if not p.is_file()]
    if len(missing) == len(photos):
        raise BadInputError(f"{missing[0]}: no such file")
    server, catalogue = catalogue_or_server(store)
    if server is not None:  # the store's holder is a search serve: it answers for us
        results, failures = _search_remotely(server, photos, options, locate)
        _print_results(results, options, as_json, multiple=len(photos) > 1)
        if verbose:
            click.echo(f"answered by search serve at {server['url']} (process {server['pid']}), which holds the store", err=True)
    else:
        t1 = time.perf_counter()
        pipeline = searcher(catalogue, model, locate)
        t2 = time.perf_counter()
        found, failures = [], 0
        for photo in photos:
            try:
                found.append(pipeline.search_file(photo, options))
            except BadInputError as exc:
                click.echo(f"Error: {exc}", err=True)
                failures += 1
        answers = [with_cards(r.to_dict(), catalogue, settings.get("display")) for r in found]  # as `search serve` answers
        _print_results(answers, options, as_json, multiple=len(photos) > 1)
        if verbose:
            _print_timings(found, started, t0, t1, t2)
    if failures:
        raise SystemExit(BadInputError.exit_code if failures == len(photos) else EXIT_PARTIAL)


def _search_remotely(server: dict, photos, options, locate: LocateOptions) -> tuple[list[dict], int]:
    """Each photo through the running `search serve`; a bad photo is one line, the others still answered."""
    from search.serve import handoff

    query = handoff.query_of(options, locate.localiser)
    results, failures = [], 0
    for photo in photos:
        try:
            results.append(handoff.search(server, photo, query, api_key=settings.get("api_key")))
        except BadInputError as exc:
            click.echo(f"Error: {exc}", err=True)
            failures += 1
    return results, failures


def _print_timings(found, started: float | None, t0: float, t1: float, t2: float) -> None:
    stages: dict[str, float] = {}
    for result in found:
        for stage, seconds in result.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    photos_seconds = stages.pop("total", 0.0)
    click.echo(
        (f"start-up (interpreter, imports) {started:.2f} s, " if started is not None else "")
        + f"store {t1 - t0:.2f} s, models {t2 - t1:.2f} s, {len(found)} photo(s) {photos_seconds:.2f} s ("
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.items() if k != "features")
        + f"), process so far {(started or 0.0) + time.perf_counter() - t0:.2f} s",
        err=True,
    )


def _print_results(results: list[dict], options, as_json: bool, multiple: bool) -> None:
    if as_json:
        emit_json(results)
        return
    for result in results:
        _print_result(result, options, multiple)


def _print_result(result: dict, options, multiple: bool) -> None:
    """One photo's answer, from its JSON form (the same whether searched here or by a running server)."""
    from indexer.store.schema import STORE_SOURCE

    if multiple:
        click.echo(f"\n{result['query']}")
    groups = result["groups"]
    for n, group in enumerate(groups):
        if len(groups) > 1:
            x0, y0, x1, y1 = group["box"]
            what = f" {group['label']}" if group["label"] else ""
            click.echo(
                f"{'' if n == 0 else chr(10)}product {n + 1}{what} at ({x0},{y0})-({x1},{y1}), region score {group['region_score']:.3f}"
            )
        if not group["matches"]:
            click.echo("no product matches (check --filter and the collection)")
            continue
        if not group["confident"]:
            click.echo(
                f"no confident match (confidence {group['confidence']:.2f} < {options.min_confidence:.2f}): the first answer is "
                "likely wrong or the product is not in the catalogue; compare the candidates below"
            )
        rows = [
            (
                m["rank"],
                m["product_id"],
                m["score"],
                m["cosine"],
                m["colour_bonus"],
                ("store view " if m.get("source") == STORE_SOURCE else "") + (m["image"] or m["path"]),
            )
            for m in group["matches"]
        ]
        click.echo(table(("rank", "product", "score", "cosine", "colour", "reference image"), rows, align="rlrrrl"))
    click.echo(f"({result['timings_ms']['total']:.0f} ms)", err=True)


@main.command()
@click.argument("text")
@text_search_options
@model_options()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (the shape of one `search image --json` entry).")
def text(text: str, options, model: ModelOptions, store: StoreOptions, as_json: bool) -> None:
    """Find catalogue products from a description, e.g. search text "black saddle bag".

    Needs a model with a text tower (FashionCLIP and other CLIP models): the
    text and the catalogue images are compared in CLIP's shared space. Scores
    are cosines, lower than photo-to-photo ones; no colour, no confidence.

    \b
    Exit codes: 0 done, 2 bad option or a model without a text tower,
    4 store unavailable, 6 model cannot be loaded.
    """
    from indexer.encoders import load_text_encoder

    if not text.strip():
        raise click.BadParameter("give some words to look for", param_hint="TEXT")
    pipeline = searcher(open_catalogue(store), model, LocateOptions("none", {"max_regions": 1}))
    index = pipeline.text_model()
    encoder = load_text_encoder(pipeline.specs[index].model, device=model.device) if index is not None else None
    result = pipeline.search_text(text.strip(), options, encoder)
    if as_json:
        from search.cards import with_cards

        emit_json(with_cards(result.to_dict(), pipeline.catalogue, settings.get("display")))
        return
    matches = result.matches
    if not matches:
        click.echo("no product matches (check --filter and the collection)")
        return
    rows = [(m.rank, m.product_id, m.category or "", m.cosine, m.image or m.path) for m in matches]
    click.echo(table(("rank", "product", "category", "cosine", "reference image"), rows, align="rllrl"))


@main.command()
@click.argument("dam", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--count", type=click.IntRange(1), default=300, show_default=True, help="Photos to make.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same products and photos.")
@click.option(
    "--view-seed",
    type=int,
    help="Shoot the products --seed picks in another, independent way (a second visit: other pose, light, clutter).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def synthesize(dam: Path, out: Path, count: int, seed: int, view_seed: int | None, as_json: bool, quiet: bool) -> None:
    """Make store-like test photos from the catalogue images in DAM, with their ground truth.

    Each photo is one catalogue product cut out of its backdrop, shrunk,
    tilted, relit, blurred and placed among other catalogue products on a
    shelf-like wall. OUT receives the photos and ground_truth.csv, ready for
    `search eval --queries OUT --ground-truth OUT/ground_truth.csv`.

    Real store photos are harder (other viewpoints, reflections, the real
    product rather than its catalogue pixels): use these to compare settings,
    not to promise accuracy.
    """
    from search.synthetic import write_synthetic_queries

    with progress_bar(count, "synthesizing", enabled=not quiet) as bar:
        written = write_synthetic_queries(dam, out, count=count, seed=seed, view_seed=view_seed, progress=bar.update)
    if not as_json:
        click.echo(f"Wrote {written} photos and {out / 'ground_truth.csv'}")
        return
    emit_json(
        {
            "photos": written,
            "folder": str(out),
            "ground_truth": str(out / "ground_truth.csv"),
            "seed": seed,
            "view_seed": view_seed,
        }
    )


if __name__ == "__main__":
    main()
