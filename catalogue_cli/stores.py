"""What a command works on: the collection, opened for the length of the command (or the server that
holds it), and the search pipeline over it."""

from __future__ import annotations

import click

from catalogue_cli.options import LocateOptions, ModelOptions, StoreOptions


def open_catalogue(store: StoreOptions, *, create: bool = False):
    """The collection, in the store the options name; closed (and its lock released) when the command ends.

    `create`: a writer may make the embedded store's folder; readers refuse a path with no store.
    """
    return open_named_store(store, create=create).collection(store.collection)


def open_named_store(store: StoreOptions, *, create: bool = False):
    """The store the options name (no collection opened yet), closed when the command ends."""
    from indexer.store import open_store

    if store.url and store.api_key and store.url.lower().startswith("http://"):
        click.echo(
            "Warning: QDRANT_API_KEY is sent in clear over http://; use an https:// URL beyond a private network.", err=True
        )
    ctx = click.get_current_context()
    opened = open_store(
        path=None if store.url else store.path,
        url=store.url,
        api_key=store.api_key,
        create=create,
        command=ctx.command_path,
    )
    ctx.call_on_close(opened.close)
    return opened


def catalogue_or_server(store: StoreOptions, *, say: bool = False):
    """(None, the collection), or (the `search serve` holding the embedded store, None): the command
    then goes through that server (`search.serve.handoff`) instead of failing on the store's lock.
    `say`: tell stderr when it does."""
    from indexer.errors import StoreInUse

    try:
        return None, open_catalogue(store)
    except StoreInUse as exc:
        from search.serve import handoff

        server = handoff.server_for(exc)
        if server is None:
            raise
    if say:
        click.echo(f"(through search serve at {server['url']}, which holds the store)", err=True)
    return server, None


def searcher(catalogue, model: ModelOptions, locate: LocateOptions):
    """The search pipeline over `catalogue`, its models loaded as the options say."""
    from search.query import Searcher

    return Searcher(
        catalogue, model=model.model, localiser=locate.localiser, detector_options=locate.detector_options, **model.loading
    )
