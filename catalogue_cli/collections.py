"""`indexer live` and `indexer drop`: which collection answers searches, switched in one step, and old
collections removed only when asked (indexer.store.live); `indexer sync --into` builds the new one."""

from __future__ import annotations

import time
from dataclasses import replace

import click

from catalogue_cli.options import StoreOptions, store_options
from catalogue_cli.output import emit_json, table
from catalogue_cli.stores import open_named_store


@click.command()
@click.argument("name", required=False)
@click.option("--back", is_flag=True, help="Make live again the collection that was live before the last switch.")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print what was switched as JSON.")
def live(name: str | None, back: bool, store: StoreOptions, as_json: bool) -> None:
    """Make collection NAME the one --collection (default: catalogue) answers from, in one atomic step.

    Build NAME first beside the live one (indexer sync DAM --into NAME
    --model M), compare them (search eval --collection NAME), then switch.
    A running search serve follows within seconds, without a restart; the
    collection that was live is kept, for --back, until indexer drop.

    \b
    Examples:
      indexer live catalogue-fashionclip
      indexer live --back

    \b
    Exit codes: 0 switched (or already live), 2 refused (a build not
    finished, nothing to go back to), 3 no such collection, 4 store unavailable.
    """
    from indexer.store.live import make_live, switch_back

    if bool(name) == back:
        raise click.UsageError("give the collection to make live, or --back")
    opened = open_named_store(store)
    switch = switch_back(opened, store.collection) if back else make_live(opened, store.collection, name)
    if as_json:
        emit_json(switch.to_dict())
    elif not switch.changed:
        click.echo(f"'{switch.live}' is already live as '{switch.alias}'")
    else:
        click.echo(f"'{switch.alias}' now answers from '{switch.live}' (before: '{switch.previous}'; back: indexer live --back)")


@click.command()
@click.argument("name")
@store_options
def drop(name: str, store: StoreOptions) -> None:
    """Delete collection NAME and its points; refused for the live one. The feedback store is kept.

    \b
    Exit codes: 0 dropped, 2 refused (it is live), 3 no such collection,
    4 store unavailable (or NAME in use by another process).
    """
    from indexer.store.live import drop as drop_collection

    opened = open_named_store(store)
    drop_collection(opened, store.collection, name)
    click.echo(f"Dropped collection '{name}' from the {opened.describe()}")


def sync_target(store: StoreOptions, into: str | None) -> tuple[StoreOptions, str | None]:
    """What `indexer sync` writes: the live collection (in place), or with --into a new one beside it, built to
    serve the live name (its store views come from that name's feedback store)."""
    if into is None:
        return store, None
    from indexer.errors import OptionError
    from indexer.store.schema import collection_name_problem

    problem = collection_name_problem(into)
    if problem:
        raise click.BadParameter(f"{into[:80]!r}: {problem}", param_hint="--into")
    opened = open_named_store(store, create=True)
    if into == store.collection or into in opened.aliases():
        raise OptionError(f"--into names a collection to build beside the live one, not the live name {into!r}")
    if into == opened.resolve(store.collection):
        raise OptionError(f"{into!r} is live as {store.collection!r}: sync it in place, without --into")
    return replace(store, collection=into), store.collection


def after_sync(catalogue, report, model, quiet: bool, *, serves: str | None, everything: bool) -> None:
    """The store views a sync brings back from the feedback store (all of them after a re-index or into a new
    collection; those of products back in the DAM otherwise), and the build marked finished."""
    from catalogue_cli.feedback import restore_after_sync

    building = serves and catalogue.exists()
    if building:
        mark_build(catalogue, serves, done=False)  # before the views: they come from that name's feedback store
    if everything or report.returned:
        products = None if everything else set(report.returned)
        report.views_restored = restore_after_sync(catalogue, model, quiet, products)
    if building:
        mark_build(catalogue, serves, done=True)


def mark_build(catalogue, serves: str, *, done: bool) -> None:
    """A collection built to serve a live name says so (its feedback is that name's), and says when its build
    finished: `indexer live` refuses one still being built, or left half built."""
    if not done:  # `views_at`: photos confirmed later are caught up when search serve switches to it (live.py)
        catalogue.update_metadata(serves=serves, built=None, views_at=time.time())
        return
    catalogue.build_index()  # the store views too: the first searches after the switch are fast
    catalogue.update_metadata(built=time.time())


def print_collections(found: list[dict]) -> None:
    """`indexer info`'s list of every collection in the store."""
    rows = [
        (c["name"], ", ".join(c["models"]) or "-", c["role"] + (" (build unfinished)" if c["unfinished"] else "")) for c in found
    ]
    if len(rows) > 1:
        click.echo("\n" + table(("collection", "models", ""), rows, align="lll"))
