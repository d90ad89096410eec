"""`indexer`: keep a Qdrant collection in sync with a folder of catalogue images."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.cli_common import (
    Commands,
    catalogue_or_server,
    device_option,
    emit_json,
    max_delete_option,
    model_loading,
    open_catalogue,
    progress_bar,
    reports_errors,
    store_options,
    table,
)
from indexer.encoders import MODEL_ENV_VAR
from indexer.errors import EXIT_PARTIAL
from indexer.feedback import MAX_ID as FEEDBACK_MAX_ID
from indexer.store.schema import DEFAULT_HNSW_THRESHOLD, QUANTIZATIONS


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="catalogue-indexer")
def main() -> None:
    """Index a brand's catalogue photos (one clean image per product) for visual search.

    \b
    Examples:
      indexer sync ./dam --model efficientnet-lite0
      indexer sync ./dam --manifest products.csv --json
      indexer info
    """


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    index, sep, count = value.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise click.BadParameter(f"{value!r}: expected I/N with 0 <= I < N, e.g. 0/4", param_hint="--shard")
    return int(index), int(count)


def _parse_renames(values: tuple[str, ...]) -> dict[str, str]:
    renames = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"{value!r}: expected OLD=NEW, e.g. MMC=product_id", param_hint="--manifest-column")
        renames[old] = new
    return renames


@main.command()
@click.argument("dam", type=click.Path(path_type=Path))
@click.option(
    "--model",
    envvar=MODEL_ENV_VAR,
    help="Hugging Face CLIP id or local folder, or an offline model (efficientnet-lite0, efficientnet-lite2); "
    "comma-separate several for an ensemble. Default: the collection's model, else patrickjohncyh/fashion-clip "
    f"[env {MODEL_ENV_VAR}].",
)
@store_options
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV with a 'file' or 'product_id' column, optional 'category' and any other columns (stored under 'meta').",
)
@click.option(
    "--manifest-column",
    "manifest_columns",
    multiple=True,
    metavar="OLD=NEW",
    help="Rename a manifest column, e.g. MMC=product_id. Repeatable.",
)
@click.option(
    "--id-pattern",
    metavar="REGEX",
    help=r"Product id from the file stem: first group of REGEX, e.g. '^(.+?)(_\d+)?$' maps CODE_2.jpg to CODE.",
)
@click.option("--reindex", is_flag=True, help="Drop the collection and encode everything again (needed to change model).")
@max_delete_option
@click.option("--dry-run", is_flag=True, help="Only report what would change.")
@device_option
@click.option("--batch-size", type=click.IntRange(1), help="Images per model batch [default: 32].")
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Processes reading, decoding and preparing images (threads for jobs under 256 images) [default: one per core].",
)
@click.option(
    "--colours", type=click.IntRange(1, 16), default=3, show_default=True, help="Palette size (k of the colour k-means)."
)
@click.option(
    "--quantization",
    type=click.Choice(QUANTIZATIONS),
    default=None,
    help="New collection: keep an int8 copy of the vectors in RAM for the first pass, rescored with the originals "
    "(4x less memory; for hundreds of thousands of images and more) [default: none].",
)
@click.option(
    "--on-disk/--in-memory",
    "on_disk",
    default=None,
    help="New collection: leave the original vectors on disk, memory-mapped [default: in memory].",
)
@click.option(
    "--hnsw-threshold",
    type=click.IntRange(1),
    default=None,
    envvar="CATALOGUE_HNSW_THRESHOLD",
    help=f"New collection: search exactly below this many points per segment, build an HNSW index above [default: {DEFAULT_HNSW_THRESHOLD:,}; env CATALOGUE_HNSW_THRESHOLD].",
)
@click.option(
    "--shard",
    metavar="I/N",
    envvar="CATALOGUE_SHARD",
    callback=lambda _ctx, _param, value: _parse_shard(value),
    help="Index only shard I of N (0 <= I < N): N workers index one folder into one Qdrant server at once, "
    "each deleting only its own vanished points [env CATALOGUE_SHARD].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def sync(
    dam: Path,
    model,
    qdrant_path,
    qdrant_url,
    collection,
    manifest,
    manifest_columns,
    id_pattern,
    reindex,
    max_delete,
    dry_run,
    device,
    runtime,
    dtype,
    batch_size,
    workers,
    colours,
    quantization,
    on_disk,
    hnsw_threshold,
    shard,
    as_json,
    quiet,
) -> None:
    """Make the collection mirror the DAM folder DAM.

    Walks DAM recursively (.jpg .jpeg .png .webp), encodes new and changed
    images, deletes points of vanished files, and skips the rest without
    reading them. Safe to interrupt: run it again to finish.

    A folder that shares no file with the collection, or lacks more of it
    than --max-delete, is refused and nothing changes: a wrong mount or
    another catalogue must not wipe the collection and its store views.

    \b
    Exit codes: 0 done, 7 done but some files failed (listed on stderr),
    2 refused (another folder, --max-delete), 3 bad input, 4 store
    unavailable, 5 model mismatch, 6 model not loadable.
    """
    from indexer.scan import compile_id_pattern, read_manifest, scan
    from indexer.sync import sync as run_sync

    scanned = scan(
        dam,
        id_pattern=compile_id_pattern(id_pattern),
        manifest=read_manifest(manifest, _parse_renames(manifest_columns)) if manifest else None,
    )
    storage = {
        k: v
        for k, v in {"quantization": quantization, "on_disk": on_disk, "hnsw_threshold": hnsw_threshold}.items()
        if v is not None
    }
    catalogue = open_catalogue(qdrant_path, qdrant_url, collection, create=True)
    bar = None

    def on_plan(total: int) -> None:
        nonlocal bar
        bar = progress_bar(total, "encoding", enabled=not quiet and total > 0)

    def on_index(points: int) -> None:
        if bar is not None:
            bar.close()
        if not quiet:
            click.echo("Building the search index...", err=True)

    try:
        report = run_sync(
            dam,
            scanned,
            catalogue,
            model=model,
            reindex=reindex,
            dry_run=dry_run,
            **model_loading(device, runtime, dtype),
            batch_size=batch_size,
            workers=workers,
            colours=colours,
            storage=storage,
            shard=shard,
            max_delete=max_delete,
            on_plan=on_plan,
            progress=lambda n: bar.update(n) if bar else None,
            on_index=on_index,
        )
    finally:
        if bar is not None:
            bar.close()
    if (reindex or report.returned) and not dry_run:
        products = None if reindex else set(report.returned)
        report.views_restored = _restore_views(catalogue, model_loading(device, runtime, dtype), quiet, products)
    _print_report(dam, report, as_json)
    if report.failed:
        raise SystemExit(EXIT_PARTIAL)


def _restore_views(catalogue, loading: dict, quiet: bool, products: set[str] | None = None) -> int:
    """A rebuilt collection gets its store views back from the feedback store's photos; so do `products`
    that came back to the DAM (their views were set aside when they left)."""
    from search.views import StoreViews

    views = StoreViews(catalogue)
    if not len(views.log) or (products is not None and not any(views.log.entries(p) for p in products)):
        return 0
    from search.query import Searcher

    views.searcher = Searcher(catalogue, **loading)
    return _restore(views, quiet, products)["restored"]


def _restore(views, quiet: bool, products: set[str] | None = None) -> dict:
    """Every kept photo (of `products`) re-embedded as a store view, with a progress bar."""
    with progress_bar(len(views.log), "store views", enabled=not quiet) as bar:
        return views.restore(progress=bar.update, products=products)


def _print_report(dam: Path, report, as_json: bool) -> None:
    from indexer.scan import display_path

    for path, reason in report.skipped:
        click.echo(f"skipped: {display_path(path)}: {reason}", err=True)
    for path, error in report.failed:
        click.echo(f"failed: {display_path(path)}: {error}", err=True)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_summary(dam, report)


def _print_summary(dam: Path, report) -> None:
    data = report.to_dict()
    verb = "Would sync" if report.dry_run else "Synced"
    click.echo(f"{verb} {dam} into collection '{report.collection}' ({', '.join(report.models)}) in {report.seconds:.1f} s")
    rows = [
        (k, len(data[k]) if k in ("failed", "skipped") else data[k])
        for k in ("added", "updated", "deleted", "unchanged", "failed", "skipped")
    ]
    click.echo(table(("", "images"), rows, align="lr"))
    if report.views_removed:
        click.echo(
            f"Set aside {report.views_removed} store view(s) of products no longer in the DAM: the feedback store keeps "
            "their photos, and they come back with their product"
        )
    if report.views_restored:
        click.echo(f"Restored {report.views_restored} store view(s) from the feedback store")
    if report.encoded:
        stages = ", ".join(
            f"{k} {v:.1f} s"
            for k, v in data["stages"].items()
            if k in ("read", "decode", "colour", "preprocess", "encode", "upsert")
        )
        click.echo(
            f"Encoded {report.encoded} images at {data['images_per_second']} images/s, prepared by {report.prepared_by} ({stages}; "
            "read to preprocess: CPU seconds of the workers; encode: seconds of the forwards, "
            "summed over the lanes that run side by side; upsert: wall seconds)"
        )


@main.command()
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@reports_errors
def info(qdrant_path, qdrant_url, collection, as_json) -> None:
    """Show what a collection holds: models, DAM root, image and product counts."""
    from indexer.errors import BadInputError

    catalogue = open_catalogue(qdrant_path, qdrant_url, collection)
    if not catalogue.exists():
        raise BadInputError(f"no collection '{collection}' in this store; create it with: indexer sync DAM_FOLDER")
    from indexer.feedback import FeedbackLog
    from indexer.store.schema import STORE_VIEWS

    images = list(catalogue.indexed_images())
    meta = catalogue.record()
    log = FeedbackLog.of(catalogue.store, collection)
    data = {
        "collection": collection,
        "images": len(images),
        "store_views": catalogue.count(STORE_VIEWS),
        "feedback": {"entries": len(log), "folder": str(log.folder)},
        "products": len({i.product_id for i in images}),
        "categories": sorted({i.category for i in images if i.category}),
        "models": meta.get("models", []),
        "root": meta.get("root"),
        "schema": meta.get("schema"),
        "storage": catalogue.settings().to_dict(),
        "store": catalogue.store.describe(),
        "calibration": meta.get("calibration"),
    }
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"collection  {collection} in the {data['store']}\nimages      {data['images']}\nproducts    {data['products']}\nroot        {data['root']}"
    )
    for m in data["models"]:
        click.echo(f"model       {m['model']}  (vector '{m['vector']}', {m['dim']}-d)")
    click.echo(
        f"store views {data['store_views']} (feedback entries: {data['feedback']['entries']} in {data['feedback']['folder']})"
    )
    if data["categories"]:
        click.echo(f"categories  {', '.join(data['categories'])}")
    storage = data["storage"]
    click.echo(
        f"storage     quantization {storage['quantization']}, vectors {'on disk' if storage['on_disk'] else 'in memory'}, "
        f"exact search below {storage['hnsw_threshold']:,} points per segment"
    )
    calibration = data["calibration"]
    click.echo(
        f"confidence  {'calibrated on ' + calibration['source'] if calibration else 'built-in calibration (run search eval --calibrate)'}"
    )


@main.command()
@click.option(
    "--qdrant-path",
    type=click.Path(file_okay=False),
    envvar="CATALOGUE_QDRANT_PATH",
    help="Embedded store to convert [env CATALOGUE_QDRANT_PATH; default ~/.local/share/catalogue-indexer/qdrant].",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was converted as JSON.")
@reports_errors
def migrate(qdrant_path, as_json) -> None:
    """Convert a store written by the previous embedded engine (qdrant-client local mode).

    Every point is copied with its vectors and payload: nothing is
    re-encoded. The old files are kept in STORE/legacy-local-mode/ (delete
    them once you are satisfied). Safe to interrupt and run again.

    \b
    Exit codes: 0 done (or nothing to convert), 4 store unavailable.
    """
    from indexer.store import open_store
    from indexer.store.legacy import migrate as convert

    ctx = click.get_current_context()
    store = open_store(path=qdrant_path, command=ctx.command_path)
    ctx.call_on_close(store.close)
    done = convert(store)
    if as_json:
        emit_json({"store": str(store.root), "converted": [vars(m) for m in done]})
    elif not done:
        click.echo(f"Nothing to convert in {store.root}: no collection of the previous embedded engine.")
    else:
        for m in done:
            click.echo(f"Converted collection '{m.collection}': {m.points} points ({', '.join(m.models)}), nothing re-encoded")
        click.echo(f"The old files are in {store.root / 'legacy-local-mode'}; delete them when satisfied.")


@main.group(cls=Commands)
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
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@reports_errors
def feedback_add(
    photo, product_id, not_in_catalogue, box, by, qdrant_path, qdrant_url, collection, device, runtime, dtype, as_json
):
    """Record what PHOTO shows; a confirmed product gains it as a store view.

    A second answer for the same photo (same bytes) replaces the first. Each
    product keeps its newest $CATALOGUE_MAX_STORE_VIEWS views (default 10).

    \b
    Exit codes: 0 recorded, 2 bad options, 3 bad photo or unknown product, 4 store unavailable.
    """
    from indexer.errors import OptionError
    from indexer.feedback import parse_box
    from indexer.images import read_file
    from search.query import Searcher
    from search.serve import handoff
    from search.views import StoreViews, max_views

    if bool(product_id) == not_in_catalogue:
        raise OptionError("say what the photo shows: --product ID, or --not-in-catalogue")
    located = parse_box(box)
    data = read_file(photo, label=str(photo))
    server, catalogue = _catalogue_or_server(qdrant_path, qdrant_url, collection)
    if server is not None:
        query = {"product_id": product_id, "not_in_catalogue": "true" if not_in_catalogue else None, "by": by, "origin": "cli"}
        query["box"] = None if located is None else ",".join(map(str, located))
        recorded = handoff.feedback(server, "POST", "/v1/feedback", {k: v for k, v in query.items() if v}, photo=photo, data=data)
        limit = max_views()
    else:
        views = StoreViews(catalogue, searcher=Searcher(catalogue, **model_loading(device, runtime, dtype)))
        recorded = views.record(data, name=str(photo), product_id=product_id, box=located, origin="cli", by=by).to_dict()
        limit = views.limit
    if as_json:
        emit_json(recorded)
        return
    _print_recorded(photo, recorded, limit)


def _catalogue_or_server(qdrant_path, qdrant_url, collection):
    server, catalogue = catalogue_or_server(qdrant_path, qdrant_url, collection)
    if server is not None:
        click.echo(f"(through search serve at {server['url']}, which holds the store)", err=True)
    return server, catalogue


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
@reports_errors
def feedback_list(product_id, limit, qdrant_path, qdrant_url, collection, as_json):
    """Show the recorded feedback, newest first, and which entries are store views now."""
    from search.views import StoreViews

    server, catalogue = _catalogue_or_server(qdrant_path, qdrant_url, collection)
    if server is not None:
        from search.serve import handoff

        listed = handoff.feedback(
            server, "GET", "/v1/feedback", {"product_id": product_id, "limit": 1000} if product_id else {"limit": 1000}
        )
        entries, total, folder = listed["entries"], listed["total"], f"the feedback store of search serve at {server['url']}"
    else:
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
@click.argument("entry_ids", nargs=-1, required=True, type=click.IntRange(1, FEEDBACK_MAX_ID), metavar="ID...")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print the removed entries as JSON.")
@reports_errors
def feedback_remove(entry_ids, qdrant_path, qdrant_url, collection, as_json):
    """Remove entries (undo, or prune a wrong one): the photo, the log entry and its store view go.

    \b
    Exit codes: 0 removed, 3 an id is not in the log (the others are still removed).
    """
    from indexer.errors import BadInputError
    from search.views import StoreViews

    server, catalogue = _catalogue_or_server(qdrant_path, qdrant_url, collection)
    views = StoreViews(catalogue) if catalogue is not None else None
    removed, missing = [], []
    for entry_id in entry_ids:
        if views is not None:
            entry = views.remove(entry_id)
            entry = entry.to_dict() if entry else None
        else:
            from search.serve import handoff

            try:
                entry = handoff.feedback(server, "DELETE", f"/v1/feedback/{entry_id}", {})
            except BadInputError:
                entry = None
        (removed.append(entry) if entry else missing.append(entry_id))
    if as_json:
        emit_json({"removed": removed, "missing": missing})
    else:
        for entry in removed:
            click.echo(f"Removed #{entry['id']} ({entry['product_id'] or 'not in the catalogue'}, {entry['created']})")
    if missing:
        where = views.log.folder if views is not None else f"search serve at {server['url']}"
        click.echo(f"Error: no feedback entry {', '.join(f'#{i}' for i in missing)} in {where}", err=True)
        raise SystemExit(BadInputError.exit_code)


#: How `indexer feedback restore` names each disagreement it repaired (search/views.py DISAGREEMENTS).
REPAIRED = {
    "views_missing": "missing view(s) made again",
    "views_product_differs": "view(s) naming another product than the log, made right",
    "views_not_in_catalogue": "view(s) of photos said not to be in the catalogue, removed",
    "views_without_entry": "view(s) without a log entry, removed",
    "views_left_out": "view(s) over the cap or of products gone, removed",
}


@feedback.command(name="restore")
@store_options
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def feedback_restore(qdrant_path, qdrant_url, collection, device, runtime, dtype, as_json, quiet):
    """Make the store views agree with the feedback log: re-embed every photo that should be a view, remove
    every view that should not be one (indexer sync --reindex does this itself)."""
    from search.query import Searcher
    from search.views import DISAGREEMENTS, StoreViews

    catalogue = open_catalogue(qdrant_path, qdrant_url, collection)
    views = StoreViews(catalogue, searcher=Searcher(catalogue, **model_loading(device, runtime, dtype)))
    done = _restore(views, quiet)
    if as_json:
        emit_json(done)
    else:
        click.echo(
            f"Restored {done['restored']} store view(s); left out: {done['product_gone']} of products no longer in the catalogue, "
            f"{done['over_cap']} over the cap of {views.limit} per product, {done['unreadable']} unreadable photo(s)"
        )
        repaired = [f"{done[kind]} {REPAIRED[kind]}" for kind in DISAGREEMENTS if done[kind]]
        click.echo(f"Repaired: {'; '.join(repaired)}" if repaired else "The store views agreed with the log")


if __name__ == "__main__":
    main()
