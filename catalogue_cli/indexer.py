"""`indexer`: keep a Qdrant collection in sync with a folder of catalogue images."""

from __future__ import annotations

from pathlib import Path

import click

from catalogue_cli.collections import after_sync, drop, live, print_collections, sync_target
from catalogue_cli.errors import Commands
from catalogue_cli.feedback import feedback
from catalogue_cli.options import (
    SYNC_MODEL,
    ModelOptions,
    SettingOption,
    StoreOptions,
    embedded_store_option,
    max_delete_option,
    model_options,
    option_group,
    store_options,
)
from catalogue_cli.output import emit_json, progress_bar, table
from catalogue_cli.stores import open_catalogue
from indexer.errors import EXIT_PARTIAL
from indexer.store.schema import DEFAULT_HNSW_THRESHOLD, QUANTIZATIONS


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="catalogue-indexer")
def main() -> None:
    """Index a brand's catalogue photos (one clean image per product) for visual search.

    \b
    Examples:
      indexer sync ./dam --model efficientnet-lite0
      indexer sync ./dam --manifest products.csv --json
      indexer sync ./dam --into catalogue-v2 --model fashion-clip   (then: indexer live catalogue-v2)
      indexer info
    """


for command in (feedback, live, drop):
    main.add_command(command)


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


def _product_rules(manifest: Path | None, manifest_columns: tuple[str, ...], id_pattern: str | None) -> dict:
    """How files map to products: `indexer.scan.scan`'s keywords."""
    from indexer.scan import compile_id_pattern, read_manifest

    renames = _parse_renames(manifest_columns)
    return {
        "id_pattern": compile_id_pattern(id_pattern),
        "manifest": read_manifest(manifest, renames) if manifest else None,
    }


product_rules = option_group(
    "rules",
    _product_rules,
    [
        click.option(
            "--manifest",
            type=click.Path(path_type=Path, dir_okay=False),
            help="CSV with a 'file' or 'product_id' column, optional 'category' and any other columns (stored under 'meta').",
        ),
        click.option(
            "--manifest-column",
            "manifest_columns",
            multiple=True,
            metavar="OLD=NEW",
            help="Rename a manifest column, e.g. MMC=product_id. Repeatable.",
        ),
        click.option(
            "--id-pattern",
            metavar="REGEX",
            help=r"Product id from the file stem: first group of REGEX, e.g. '^(.+?)(_\d+)?$' maps CODE_2.jpg to CODE.",
        ),
    ],
)


def _storage(**chosen) -> dict:
    """A new collection's storage settings, those given."""
    return {k: v for k, v in chosen.items() if v is not None}


storage_options = option_group(
    "storage",
    _storage,
    [
        click.option(
            "--quantization",
            type=click.Choice(QUANTIZATIONS),
            default=None,
            help="New collection: keep an int8 copy of the vectors in RAM for the first pass, rescored with the originals "
            "(4x less memory; for hundreds of thousands of images and more) [default: none].",
        ),
        click.option(
            "--on-disk/--in-memory",
            "on_disk",
            default=None,
            help="New collection: leave the original vectors on disk, memory-mapped [default: in memory].",
        ),
        click.option(
            "--hnsw-threshold",
            cls=SettingOption,
            setting="hnsw_threshold",
            shown=f"{DEFAULT_HNSW_THRESHOLD:,}",
            type=click.IntRange(1),
            help="New collection: search exactly below this many points per segment, build an HNSW index above.",
        ),
    ],
)


@main.command()
@click.argument("dam", type=click.Path(path_type=Path))
@model_options(SYNC_MODEL)
@store_options
@product_rules
@click.option("--reindex", is_flag=True, help="Drop the collection and encode everything again, in place (--into: beside it).")
@click.option(
    "--into",
    metavar="NEW",
    help="Build (or finish) collection NEW beside the live one: another model, other storage settings, a repair; its "
    "store views come from the live one's feedback store. Searches keep the live one until: indexer live NEW.",
)
@max_delete_option
@click.option("--dry-run", is_flag=True, help="Only report what would change.")
@click.option("--batch-size", type=click.IntRange(1), help="Images per model batch [default: 32].")
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Processes reading, decoding and preparing images (threads for jobs under 256 images) [default: one per core].",
)
@click.option(
    "--colours", type=click.IntRange(1, 16), default=3, show_default=True, help="Palette size (k of the colour k-means)."
)
@storage_options
@click.option(
    "--shard",
    cls=SettingOption,
    setting="shard",
    shown="the whole folder",
    metavar="I/N",
    callback=lambda _ctx, _param, value: _parse_shard(value),
    help="Index only shard I of N (0 <= I < N): N workers index one folder into one Qdrant server at once, "
    "each deleting only its own vanished points.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def sync(
    dam: Path,
    model: ModelOptions,
    store: StoreOptions,
    rules: dict,
    reindex: bool,
    into: str | None,
    max_delete,
    dry_run: bool,
    batch_size: int | None,
    workers: int | None,
    colours: int,
    storage: dict,
    shard: tuple[int, int] | None,
    as_json: bool,
    quiet: bool,
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
    from indexer.scan import scan
    from indexer.sync import sync as run_sync

    scanned = scan(dam, **rules)
    store, serves = sync_target(store, into)
    catalogue = open_catalogue(store, create=True)
    serves = serves or catalogue.store.record_of(catalogue.name).get("serves")  # kept by a re-index (even of a bad record)
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
            model=model.model,
            reindex=reindex,
            dry_run=dry_run,
            **model.loading,
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
    if not dry_run:
        after_sync(catalogue, report, model, quiet, serves=serves, everything=reindex or into is not None)
    _print_report(dam, report, as_json)
    if report.failed:
        raise SystemExit(EXIT_PARTIAL)


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
def info(store: StoreOptions, as_json: bool) -> None:
    """Show what a collection holds (models, DAM root, image and product counts), the others, the settings in effect.

    Settings come from environment variables, else their defaults; keys are
    only said to be set, never shown.
    """
    from indexer import settings
    from indexer.errors import BadInputError
    from indexer.feedback import FeedbackLog
    from indexer.store.live import listing
    from indexer.store.schema import STORE_VIEWS
    from search.confidence import Calibration

    effective = settings.effective()  # a bad variable is refused before the store opens
    catalogue = open_catalogue(store)
    if not catalogue.exists():
        raise BadInputError(f"no collection '{store.collection}' in this store; create it with: indexer sync DAM_FOLDER")
    images = list(catalogue.indexed_images())
    meta = catalogue.record()
    log = FeedbackLog.of(catalogue.store, catalogue.name)
    data = {
        "collection": store.collection,
        "live": catalogue.name,
        "collections": listing(catalogue.store, store.collection),
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
        "calibration": Calibration.from_metadata(meta.get("calibration")).to_metadata(),  # the one in force
        "calibration_fits": meta.get("calibration_fits", []),
        "settings": effective,
    }
    if as_json:
        emit_json(data)
    else:
        _print_info(data)


def _print_info(data: dict) -> None:
    live = "" if data["live"] == data["collection"] else f" (answering from collection {data['live']})"
    click.echo(
        f"collection  {data['collection']}{live} in the {data['store']}\nimages      {data['images']}\n"
        f"products    {data['products']}\nroot        {data['root']}"
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
    from search.refit import describe

    click.echo("\n".join(describe(data["calibration"], data["calibration_fits"])))
    print_collections(data["collections"])
    rows = [(s["env"], "-" if s["value"] is None else s["value"], s["source"]) for s in data["settings"].values()]
    click.echo("\n" + table(("setting", "value", "from"), rows, align="lll"))


@main.command()
@embedded_store_option
@click.option("--json", "as_json", is_flag=True, help="Print what was converted as JSON.")
def migrate(store: StoreOptions, as_json: bool) -> None:
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
    opened = open_store(path=store.path, command=ctx.command_path)
    ctx.call_on_close(opened.close)
    done = convert(opened)
    if as_json:
        emit_json({"store": str(opened.root), "converted": [vars(m) for m in done]})
    elif not done:
        click.echo(f"Nothing to convert in {opened.root}: no collection of the previous embedded engine.")
    else:
        for m in done:
            click.echo(f"Converted collection '{m.collection}': {m.points} points ({', '.join(m.models)}), nothing re-encoded")
        click.echo(f"The old files are in {opened.root / 'legacy-local-mode'}; delete them when satisfied.")


if __name__ == "__main__":
    main()
