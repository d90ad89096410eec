"""`indexer feedback`: the photos staff confirmed, recorded as store views (search.views) in the feedback
store (indexer.feedback), here or through the `search serve` that holds the store."""

from __future__ import annotations

from pathlib import Path

import click

from catalogue_cli.errors import Commands
from catalogue_cli.options import ModelOptions, StoreOptions, model_options, store_options
from catalogue_cli.output import emit_json, progress_bar, table
from catalogue_cli.stores import catalogue_or_server, open_catalogue
from indexer.errors import EXIT_PARTIAL
from indexer.feedback import MAX_ID

#: How `indexer feedback restore` names each disagreement it repaired (search/views.py DISAGREEMENTS).
REPAIRED = {
    "views_missing": "missing view(s) made again",
    "views_product_differs": "view(s) naming another product than the log, made right",
    "views_not_in_catalogue": "view(s) of photos said not to be in the catalogue, removed",
    "views_without_entry": "view(s) without a log entry, removed",
    "views_left_out": "view(s) over the cap or of products gone, removed",
}


@click.group(cls=Commands)
def feedback() -> None:
    """Store photos staff confirmed: add, list, remove, restore.

    A confirmed photo becomes a store view: one more reference of its product,
    taken in store conditions, so the next photo like it is named right. The
    photos and the log live in a feedback store beside the collection
    ($CATALOGUE_FEEDBACK_PATH, default: feedback/ inside the embedded store).

    \b
    Examples:
      indexer feedback add shelf.jpg --product 1AB2CD
      indexer feedback add shelf.jpg --not-in-catalogue
      indexer feedback list --product 1AB2CD
      indexer feedback remove 42
    """


@feedback.command(name="add")
@click.argument("photo", type=click.Path(path_type=Path))
@click.option("--product", "product_id", metavar="ID", help="The product the photo shows (a product id of the collection).")
@click.option("--not-in-catalogue", is_flag=True, help="The photo shows a product that is not in the catalogue.")
@click.option(
    "--box", metavar="X0,Y0,X1,Y1", help="Where the product is in the photo, in pixels; default: located as a search does."
)
@click.option("--by", metavar="NAME", help="Who confirmed it (a staff or device id), kept in the log.")
@store_options
@model_options(model=None)
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
def feedback_add(
    photo: Path, product_id, not_in_catalogue, box, by, store: StoreOptions, model: ModelOptions, as_json: bool
) -> None:
    """Record what PHOTO shows; a confirmed product gains it as a store view.

    A second answer for the same photo (same bytes) replaces the first. Each
    product keeps its newest $CATALOGUE_MAX_STORE_VIEWS views (default 10).

    \b
    Exit codes: 0 recorded, 2 bad options, 3 bad photo or unknown product, 4 store unavailable.
    """
    from indexer import settings
    from indexer.errors import OptionError
    from indexer.feedback import parse_box
    from indexer.images import read_file

    if bool(product_id) == not_in_catalogue:
        raise OptionError("say what the photo shows: --product ID, or --not-in-catalogue")
    located = parse_box(box)
    data = read_file(photo, label=str(photo))
    server, catalogue = catalogue_or_server(store, say=True)
    if server is not None:
        from search.serve import handoff

        query = {"product_id": product_id, "not_in_catalogue": "true" if not_in_catalogue else None, "by": by, "origin": "cli"}
        query["box"] = None if located is None else ",".join(map(str, located))
        recorded = handoff.feedback(server, "POST", "/v1/feedback", {k: v for k, v in query.items() if v}, photo=photo, data=data)
        limit = settings.get("max_store_views")
    else:
        from search.query import Searcher
        from search.views import StoreViews

        views = StoreViews(catalogue, searcher=Searcher(catalogue, **model.loading))
        recorded = views.record(data, name=str(photo), product_id=product_id, box=located, origin="cli", by=by).to_dict()
        limit = views.limit
    if as_json:
        emit_json(recorded)
        return
    _print_recorded(photo, recorded, limit)


def _print_recorded(photo, recorded: dict, limit: int) -> None:
    product = recorded["product_id"]
    answered = ", ".join(recorded["answered"][:3]) or "nothing"
    what = f"as {product} ({recorded['verdict']}; the search answered {answered})" if product else "as not in the catalogue"
    click.echo(f"Recorded #{recorded['id']}: {photo} {what}")
    replaced = recorded["replaced"]
    if replaced:
        click.echo(f"It replaces #{replaced['id']}, which said {replaced['product_id'] or 'not in the catalogue'}")
    if recorded["view"]:
        click.echo(f"Store view {recorded['view']} added to product {product}")
    if recorded["evicted_views"]:
        click.echo(f"{len(recorded['evicted_views'])} older view(s) of {product} dropped (at most {limit} per product)")


@feedback.command(name="list")
@click.option("--product", "product_id", metavar="ID", help="Only this product's entries.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, help="Newest entries shown.")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print every entry as JSON.")
def feedback_list(product_id, limit: int, store: StoreOptions, as_json: bool) -> None:
    """Show the recorded feedback, newest first, and which entries are store views now."""
    server, catalogue = catalogue_or_server(store, say=True)
    if server is not None:
        from search.serve import handoff

        query = {"product_id": product_id, "limit": 1000} if product_id else {"limit": 1000}
        listed = handoff.feedback(server, "GET", "/v1/feedback", query)
        entries, total, folder = listed["entries"], listed["total"], f"the feedback store of search serve at {server['url']}"
    else:
        from search.views import StoreViews

        views = StoreViews(catalogue)
        entries = views.listed(product_id)
        total, folder = len(entries), str(views.log.folder)
    if as_json:
        emit_json({"folder": folder, "total": total, "entries": entries})
        return
    if not entries:
        click.echo(f"No feedback in {folder}" + (f" for product {product_id}" if product_id else ""))
        return
    rows = [
        (
            e["id"],
            e["created"],
            e["product_id"] or "-",
            e["verdict"],
            e["answered"][0] if e["answered"] else "-",
            "yes" if e["view"] else "no",
            e["by"] or "",
        )
        for e in entries[:limit]
    ]
    click.echo(table(("id", "when (UTC)", "product", "verdict", "search said", "view", "by"), rows, align="rllllll"))
    more = f", {limit} newest shown" if total > limit else ""
    click.echo(f"{total} entr{'y' if total == 1 else 'ies'} in {folder}{more}")


@feedback.command(name="remove")
@click.argument("entry_ids", nargs=-1, required=True, type=click.IntRange(1, MAX_ID), metavar="ID...")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print the removed entries as JSON.")
def feedback_remove(entry_ids: tuple[int, ...], store: StoreOptions, as_json: bool) -> None:
    """Remove entries (undo, or prune a wrong one): the photo, the log entry and its store view go.

    \b
    Exit codes: 0 removed, 7 some ids are not in the log (the others are
    still removed), 3 none is.
    """
    from indexer.errors import BadInputError

    server, catalogue = catalogue_or_server(store, say=True)
    if catalogue is not None:
        from search.views import StoreViews

        views = StoreViews(catalogue)
        where = views.log.folder
    else:
        where = f"search serve at {server['url']}"
    removed, missing = [], []
    for entry_id in entry_ids:
        entry = _remove(views, entry_id) if catalogue is not None else _remove_through(server, entry_id)
        (removed.append(entry) if entry else missing.append(entry_id))
    if as_json:
        emit_json({"removed": removed, "missing": missing})
    else:
        for entry in removed:
            click.echo(f"Removed #{entry['id']} ({entry['product_id'] or 'not in the catalogue'}, {entry['created']})")
    if missing:
        click.echo(f"Error: no feedback entry {', '.join(f'#{i}' for i in missing)} in {where}", err=True)
        raise SystemExit(EXIT_PARTIAL if removed else BadInputError.exit_code)


def _remove(views, entry_id: int) -> dict | None:
    entry = views.remove(entry_id)
    return entry.to_dict() if entry else None


def _remove_through(server: dict, entry_id: int) -> dict | None:
    from indexer.errors import BadInputError
    from search.serve import handoff

    try:
        return handoff.feedback(server, "DELETE", f"/v1/feedback/{entry_id}", {})
    except BadInputError:
        return None


@feedback.command(name="restore")
@store_options
@model_options(model=None)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def feedback_restore(store: StoreOptions, model: ModelOptions, as_json: bool, quiet: bool) -> None:
    """Make the store views agree with the feedback log: re-embed every photo that should be a view, remove
    every view that should not be one (indexer sync --reindex does this itself)."""
    from search.query import Searcher
    from search.views import DISAGREEMENTS, StoreViews

    catalogue = open_catalogue(store)
    views = StoreViews(catalogue, searcher=Searcher(catalogue, **model.loading))
    done = restore(views, quiet)
    if as_json:
        emit_json(done)
        return
    click.echo(
        f"Restored {done['restored']} store view(s); left out: {done['product_gone']} of products no longer in the catalogue, "
        f"{done['over_cap']} over the cap of {views.limit} per product, {done['unreadable']} unreadable photo(s)"
    )
    repaired = [f"{done[kind]} {REPAIRED[kind]}" for kind in DISAGREEMENTS if done[kind]]
    click.echo(f"Repaired: {'; '.join(repaired)}" if repaired else "The store views agreed with the log")


def restore(views, quiet: bool, products: set[str] | None = None) -> dict:
    """Every kept photo (of `products`) re-embedded as a store view, with a progress bar."""
    with progress_bar(len(views.log), "store views", enabled=not quiet) as bar:
        return views.restore(progress=bar.update, products=products)


def restore_after_sync(catalogue, model: ModelOptions, quiet: bool, products: set[str] | None = None) -> int:
    """A rebuilt collection gets its store views back from the feedback store's photos; so do `products`
    that came back to the DAM (their views were set aside when they left)."""
    from search.views import StoreViews

    views = StoreViews(catalogue)
    if not len(views.log) or (products is not None and not any(views.log.entries(p) for p in products)):
        return 0
    from search.query import Searcher

    views.searcher = Searcher(catalogue, **model.loading)
    return restore(views, quiet, products)["restored"]
