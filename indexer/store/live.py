"""Which collection a name serves: a re-index builds a new collection beside the live one, then one step
makes it live, and one step switches back.

A name (`--collection`, default `catalogue`) serves one collection: itself, or
the one it was pointed at. The embedded store keeps the pointers in
`live.json`, replaced atomically; a Qdrant server keeps them as its own
collection aliases, so other services querying the name follow too. Both
engines answer the same few calls (`names`, `record_of`, `aliases`,
`resolve`, `set_alias`, `forget_previous`, `drop`); the rules live here once. Collections are only ever removed by `drop`, never by a switch.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexer.errors import BadInputError, OptionError
from indexer.store.schema import collection_name_problem


@dataclass(frozen=True)
class Switch:
    """What a switch did: `alias` now serves `live`, and served `previous` before."""

    alias: str
    live: str
    previous: str | None

    @property
    def changed(self) -> bool:
        return self.live != self.previous

    def to_dict(self) -> dict:
        return {"collection": self.alias, "live": self.live, "previous": self.previous, "changed": self.changed}


def make_live(store, alias: str, name: str) -> Switch:
    """Make `name` the collection `alias` serves; refused for a collection that is missing or half built."""
    problem = collection_name_problem(name)
    if problem:
        raise OptionError(f"{name!r}: {problem}")
    if name not in store.names():
        raise BadInputError(
            f"no collection {name!r} in the {store.describe()}; build it beside the live one first: "
            f"indexer sync DAM_FOLDER --into {name} --model MODEL"
        )
    if unfinished(store.record_of(name)):
        raise OptionError(
            f"the build of {name!r} has not finished (its writes are not indexed yet): let it end, "
            f"or run the same indexer sync --into {name} again"
        )
    current = store.resolve(alias)
    if current == name:
        return Switch(alias, name, name)
    previous = current if current in store.names() else None
    store.set_alias(alias, name, previous)
    return Switch(alias, name, previous)


def unfinished(record: dict) -> bool:
    """Whether a collection built to serve a live name (`indexer sync --into`) has not finished its build."""
    return bool(record.get("serves")) and not record.get("built")


def switch_back(store, alias: str) -> Switch:
    """Make the collection `alias` served before the last switch live again."""
    previous = (store.aliases().get(alias) or {}).get("previous")
    if not previous:
        raise OptionError(f"{alias!r} has no earlier collection to go back to (indexer info lists the collections)")
    if previous not in store.names():
        raise BadInputError(f"{alias!r} served {previous!r} before, but {previous!r} was dropped since")
    return make_live(store, alias, previous)


def live_collections(store, alias: str) -> set[str]:
    """The collections some name serves now: `alias`'s, and every alias's."""
    return {store.resolve(alias), *(entry.get("collection") for entry in store.aliases().values())}


def drop(store, alias: str, name: str) -> None:
    """Delete collection `name`: never one that a name serves (switch first), never silently."""
    if name in live_collections(store, alias):
        raise OptionError(
            f"{name!r} is live (it answers searches); make another collection live first (indexer live OTHER), then drop it"
        )
    if name not in store.names():
        raise BadInputError(f"no collection {name!r} in the {store.describe()} (indexer info lists them)")
    store.drop(name)
    store.forget_previous(name)


def listing(store, alias: str) -> list[dict]:
    """Every collection of the store: its models, and what it is to the names (live, previous, built to serve)."""
    aliases = store.aliases()
    live = {entry.get("collection"): a for a, entry in aliases.items()}
    live.setdefault(store.resolve(alias), alias)
    previous = {entry.get("previous"): a for a, entry in aliases.items() if entry.get("previous")}
    found = []
    for name in store.names():
        record = store.record_of(name)
        if name in live:
            role = f"live as {live[name]!r}"
        elif name in previous:
            role = f"previous of {previous[name]!r} (indexer live --back)"
        elif record.get("serves"):
            role = f"built for {record['serves']!r} (indexer live {name})"
        else:
            role = ""
        found.append(
            {
                "name": name,
                "models": [m.get("model") for m in record.get("models", [])],
                "role": role,
                "unfinished": unfinished(record),
            }
        )
    return found
