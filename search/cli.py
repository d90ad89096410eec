"""`search`: name the catalogue product in store photos."""

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
    reports_errors,
    store_options,
    table,
)
from indexer.encoders import MODEL_ENV_VAR
from search.confidence import DEFAULT_MIN_CONFIDENCE
from search.rescore import DEFAULT_ALPHA, DEFAULT_THRESHOLD


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


def ranking_options(command):
    """Options shared by every command that ranks products."""
    decorators = [
        click.option("--top-k", type=click.IntRange(1), default=10, show_default=True, help="Products to return."),
        click.option(
            "--candidates", type=click.IntRange(1), default=100, show_default=True, help="Nearest catalogue images to re-score."
        ),
        click.option(
            "--alpha", type=click.FloatRange(0), default=DEFAULT_ALPHA, show_default=True, help="Weight of the colour bonus."
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(0),
            default=DEFAULT_THRESHOLD,
            show_default=True,
            help="CIELAB distance beyond which colour gives no bonus.",
        ),
        click.option("--no-colour", "no_colour", is_flag=True, help="Rank by cosine only."),
        click.option(
            "--filter",
            "filters",
            multiple=True,
            metavar="KEY=VALUE",
            help="Payload filter, e.g. category='W Bags' or meta.season=SS24; KEY!=VALUE excludes. Repeatable (all must hold).",
        ),
        click.option(
            "--no-store-views",
            "no_store_views",
            is_flag=True,
            help="Match catalogue images only, leaving out the store photos staff confirmed (to compare).",
        ),
        click.option(
            "--model",
            envvar=MODEL_ENV_VAR,
            help=f"Must match the collection's model; default: the collection's [env {MODEL_ENV_VAR}].",
        ),
        device_option,
        click.option(
            "--locate",
            type=click.Choice(["centre", "none", "proposals", "owlv2"]),
            default="centre",
            show_default=True,
            envvar="CATALOGUE_LOCATE",
            help="How to find the product: centre views + cut-out (default), none (whole photo), "
            "proposals (model-free, several products), owlv2 (detector, several products).",
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
        click.option(
            "--min-confidence",
            type=click.FloatRange(0, 1),
            default=DEFAULT_MIN_CONFIDENCE,
            show_default=True,
            help="Below this calibrated probability the top answer is flagged 'no confident match'.",
        ),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _detector_options(locate, detector, prompts, max_products) -> dict:
    options: dict = {"max_regions": max_products}
    if locate == "owlv2":
        from search.detect import DEFAULT_DETECTOR, Prompt

        options["model"] = detector or DEFAULT_DETECTOR
        if prompts:
            options["prompts"] = tuple(Prompt.parse(p) for p in prompts)
    elif detector or prompts:
        raise click.UsageError("--detector and --prompt only apply to --locate owlv2")
    return options


def _searcher(catalogue, model, loading: dict, locate, detector, prompts, max_products):
    from search.query import Searcher

    options = _detector_options(locate, detector, prompts, max_products)
    return Searcher(catalogue, model=model, localiser=locate, detector_options=options, **loading)


def _options(top_k, candidates, alpha, threshold, no_colour, filters, min_confidence, no_store_views=False):
    from search.options import make_options

    return make_options(
        top_k=top_k,
        candidates=candidates,
        alpha=alpha,
        threshold=threshold,
        colour=not no_colour,
        filters=filters,
        min_confidence=min_confidence,
        store_views=not no_store_views,
    )


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@ranking_options
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (a list, one entry per photo).")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also print where the time went (start-up, store, models, each stage) on stderr."
)
@reports_errors
def image(
    photos,
    top_k,
    candidates,
    alpha,
    threshold,
    no_colour,
    filters,
    no_store_views,
    model,
    device,
    runtime,
    dtype,
    locate,
    detector,
    prompts,
    max_products,
    min_confidence,
    qdrant_path,
    qdrant_url,
    collection,
    as_json,
    verbose,
) -> None:
    """Rank catalogue products for each photo in PHOTOS.

    Each row is a product with its best-matching catalogue image: final
    score = cosine + colour bonus (see --alpha, --threshold). With
    --locate proposals or owlv2, each product found in the photo gets its
    own ranked group, with its box.

    \b
    Exit codes: 0 done, 3 a photo is missing or not an image (the others are
    still searched), 4 store unavailable, 5 model mismatch.
    """
    import time

    from indexer.cli_common import process_age
    from indexer.errors import BadInputError

    started, t0 = process_age(), time.perf_counter()
    options = _options(top_k, candidates, alpha, threshold, no_colour, filters, min_confidence, no_store_views)
    missing = [p for p in photos if not p.is_file()]
    if len(missing) == len(photos):
        raise BadInputError(f"{missing[0]}: no such file")
    server, catalogue = catalogue_or_server(qdrant_path, qdrant_url, collection)
    if server is not None:  # the store's holder is a search serve: it answers for us
        from search.serve import handoff

        results, failures = _search_remotely(server, photos, handoff.query_of(options, locate))
        _print_results(results, options, as_json, multiple=len(photos) > 1)
        if verbose:
            click.echo(f"answered by search serve at {server['url']} (process {server['pid']}), which holds the store", err=True)
        if failures:
            raise SystemExit(BadInputError.exit_code)
        return
    t1 = time.perf_counter()
    searcher = _searcher(catalogue, model, model_loading(device, runtime, dtype), locate, detector, prompts, max_products)
    t2 = time.perf_counter()
    found, failures = [], 0
    for photo in photos:
        try:
            found.append(searcher.search_file(photo, options))
        except BadInputError as exc:
            click.echo(f"Error: {exc}", err=True)
            failures += 1
    _print_results([r.to_dict() for r in found], options, as_json, multiple=len(photos) > 1)
    if verbose:
        stages = {}
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
    if failures:
        raise SystemExit(BadInputError.exit_code)


def _search_remotely(server: dict, photos, query: dict) -> tuple[list[dict], int]:
    """Each photo through the running `search serve`; a bad photo is one line, the others still answered."""
    import os

    from indexer.errors import BadInputError
    from search.serve import handoff

    results, failures = [], 0
    for photo in photos:
        try:
            results.append(handoff.search(server, photo, query, api_key=os.environ.get("CATALOGUE_API_KEY") or None))
        except BadInputError as exc:
            click.echo(f"Error: {exc}", err=True)
            failures += 1
    return results, failures


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


def _floats(value: str, name: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers", param_hint=name) from None


@main.command(name="eval")
@click.option("--queries", type=click.Path(path_type=Path, file_okay=False), help="Folder of query photos.")
@click.option(
    "--ground-truth",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV of query,reference rows (reference: image file name or product id; several rows per query allowed).",
)
@click.option(
    "--feedback",
    "use_feedback",
    is_flag=True,
    help="Evaluate on the store photos staff confirmed (indexer feedback), each without its own store view "
    "(leave-one-out), instead of --queries and --ground-truth.",
)
@ranking_options
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Cut-offs for top-k accuracy.")
@click.option("--sweep", is_flag=True, help="Also rank under every --alphas x --thresholds pair and report the best.")
@click.option("--alphas", default="0.01,0.02,0.05,0.1,0.2,0.3", show_default=True, help="Alpha grid for --sweep.")
@click.option("--thresholds", default="10,20,30,40,60", show_default=True, help="Threshold grid for --sweep.")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), help="Write a self-contained HTML report here.")
@click.option(
    "--calibrate", is_flag=True, help="Fit the 'no confident match' calibration on these photos and store it in the collection."
)
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON, per-query ranks included.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def eval_command(
    queries,
    ground_truth,
    use_feedback,
    top_k,
    candidates,
    alpha,
    threshold,
    no_colour,
    filters,
    no_store_views,
    model,
    device,
    runtime,
    dtype,
    locate,
    detector,
    prompts,
    max_products,
    min_confidence,
    ks,
    sweep,
    alphas,
    thresholds,
    report,
    calibrate,
    qdrant_path,
    qdrant_url,
    collection,
    as_json,
    quiet,
) -> None:
    """Measure how well search names the products in labelled photos.

    Every photo in --queries with a row in --ground-truth (or, with
    --feedback, every store photo staff confirmed or said is not in the
    catalogue) goes through the same pipeline as `search image`. Reports top-k accuracy, MRR, median rank
    of the first correct product, mean top-1 cosine of right and wrong
    answers, per-category accuracy, with and without colour re-scoring, and
    with --sweep the best alpha/threshold of a grid (photos are encoded once).

    \b
    Exit codes: 0 done, 3 bad input (folder, CSV, nothing to evaluate),
    4 store unavailable, 5 model mismatch.
    """
    from indexer.cli_common import progress_bar
    from indexer.errors import BadInputError
    from search.evaluate import feedback_queries, folder_queries, read_ground_truth, run_evaluation

    if use_feedback == bool(queries or ground_truth) or (not use_feedback and not (queries and ground_truth)):
        raise click.UsageError("give --queries with --ground-truth, or --feedback")
    options = _options(top_k, candidates, alpha, threshold, no_colour, filters, min_confidence, no_store_views)
    cutoffs = tuple(sorted({int(k) for k in _floats(ks, "--k") if k >= 1}))
    if not cutoffs:
        raise click.BadParameter("give at least one k >= 1", param_hint="--k")
    grid = (_floats(alphas, "--alphas"), _floats(thresholds, "--thresholds")) if sweep else None
    truth = None if use_feedback else read_ground_truth(ground_truth)
    searcher = _searcher(
        open_catalogue(qdrant_path, qdrant_url, collection),
        model,
        model_loading(device, runtime, dtype),
        locate,
        detector,
        prompts,
        max_products,
    )
    if use_feedback:
        from indexer.feedback import FeedbackLog

        log = FeedbackLog.of(searcher.catalogue.store, searcher.catalogue.name)
        labelled, skipped, source = feedback_queries(log.entries(newest_first=False)), [], f"confirmed photos in {log.folder}"
        if not labelled:
            raise BadInputError(f"no feedback in {log.folder} yet: confirm answers first (indexer feedback add, the page)")
    else:
        labelled, skipped = folder_queries(queries, truth)
        source = f"photos in {queries}"
    with progress_bar(len(labelled), "evaluating", enabled=not quiet) as bar:
        run = run_evaluation(
            searcher,
            labelled,
            options,
            ks=cutoffs,
            sweep=grid,
            calibrate=calibrate,
            skipped=skipped,
            source=source,
            progress=bar.update,
        )
    if report:
        from search.report import write_report

        write_report(run.evaluation, report, shown_setting=run.shown, reference_images=searcher.reference_images())
        click.echo(f"Report written to {report}", err=True)
    if as_json:
        emit_json(run.to_dict(searcher))
        return
    _print_evaluation(run.evaluation, collection, searcher, run.shown, run.best, sweep)
    confidence, fitted = run.confidence, run.calibrated
    if confidence:
        click.echo(
            f"Confidence ({confidence['calibration']}): AUC {confidence['auc']:.3f} separating right top-1 answers "
            f"from wrong and not-in-catalogue ones; mean {confidence['mean_confidence_right']:.2f} vs {confidence['mean_confidence_wrong']:.2f}"
        )
        click.echo(
            f"At --min-confidence {min_confidence:g}: {confidence['flagged_wrong']:.0%} of wrong and not-in-catalogue "
            f"answers flagged, {confidence['flagged_right']:.0%} of right ones"
        )
    if fitted:
        click.echo(
            f"Calibrated on {fitted['samples']} answers ({fitted['right']} right): AUC {fitted['auc']:.3f}; stored in collection '{collection}'"
        )


def _print_evaluation(evaluation, collection, searcher, shown, best, sweep) -> None:
    ks = evaluation.ks
    models = ", ".join(s.model for s in searcher.specs)
    click.echo(
        f"Evaluated {len(evaluation.results)} photos against '{collection}' ({models}, locate {searcher.localiser.name}) "
        f"in {evaluation.seconds:.1f} s"
    )
    rows = []
    for setting in evaluation.settings if sweep else evaluation.settings[:2]:
        m = evaluation.metrics(setting.name)
        rows.append(
            [setting.name]
            + [f"{m[f'top{k}']:.1%}" for k in ks]
            + [f"{m['mrr']:.3f}", "-" if m["median_rank"] is None else f"{m['median_rank']:g}"]
        )
    click.echo(table(["setting"] + [f"top-{k}" for k in ks] + ["MRR", "median rank"], rows, align="l" + "r" * (len(ks) + 2)))
    if sweep:
        m = evaluation.metrics(best.name)
        click.echo(
            f"Best of the sweep: alpha={best.alpha:g} threshold={best.threshold:g} (MRR {m['mrr']:.3f}, top-1 {m[f'top{ks[0]}']:.1%})"
        )
    m = evaluation.metrics(shown)
    if m["top1_through_store_view"]:
        click.echo(f"{m['top1_through_store_view']} right top-1 answer(s) won through a store view ({shown})")
    if evaluation.absent_signals:
        click.echo(f"{len(evaluation.absent_signals)} photo(s) of products not in the catalogue: counted for the confidence only")

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    click.echo(
        f"Mean cosine of the top-1 match ({shown}): correct {fmt(m['mean_cosine_top1_correct'])}, incorrect {fmt(m['mean_cosine_top1_incorrect'])}"
    )
    if m["by_category"]:
        click.echo(f"\nPer category ({shown}):")
        cat_rows = [
            [name] + [c["n"]] + [f"{c[f'top{k}']:.1%}" for k in ks] + [f"{c['mrr']:.3f}"] for name, c in m["by_category"].items()
        ]
        click.echo(table(["category", "photos"] + [f"top-{k}" for k in ks] + ["MRR"], cat_rows, align="lr" + "r" * (len(ks) + 1)))
    for query, why in evaluation.skipped:
        click.echo(f"skipped: {query}: {why}", err=True)
    for query, reference in evaluation.missing_references:
        click.echo(f"missing reference: {query}: {reference} is not in the collection", err=True)


@main.command()
@click.argument("text")
@click.option("--top-k", type=int, default=10, show_default=True, help="Products to return.")
@click.option("--candidates", type=int, default=100, show_default=True, help="Nearest catalogue images looked at.")
@click.option(
    "--filter", "filters", multiple=True, metavar="KEY=VALUE", help="Payload filter, e.g. category='W Bags'. Repeatable."
)
@click.option("--model", envvar=MODEL_ENV_VAR, help=f"Must match the collection's model [env {MODEL_ENV_VAR}].")
@device_option
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (the shape of one `search image --json` entry).")
@reports_errors
def text(text, top_k, candidates, filters, model, device, runtime, dtype, qdrant_path, qdrant_url, collection, as_json) -> None:
    """Find catalogue products from a description, e.g. search text "black saddle bag".

    Needs a model with a text tower (FashionCLIP and other CLIP models): the
    text and the catalogue images are compared in CLIP's shared space. Scores
    are cosines, lower than photo-to-photo ones; no colour, no confidence.

    \b
    Exit codes: 0 done, 2 bad option or a model without a text tower,
    4 store unavailable, 6 model cannot be loaded.
    """
    from indexer.encoders import load_text_encoder
    from search.options import make_options

    options = make_options(top_k=top_k, candidates=candidates, filters=filters, colour=False)
    if not text.strip():
        raise click.BadParameter("give some words to look for", param_hint="TEXT")
    loading = model_loading(device, runtime, dtype)
    searcher = _searcher(open_catalogue(qdrant_path, qdrant_url, collection), model, loading, "none", None, (), 1)
    index = searcher.text_model()
    encoder = load_text_encoder(searcher.specs[index].model, device=device) if index is not None else None
    result = searcher.search_text(text.strip(), options, encoder)
    if as_json:
        emit_json(result.to_dict())
        return
    matches = result.matches
    if not matches:
        click.echo("no product matches (check --filter and the collection)")
        return
    rows = [(m.rank, m.product_id, m.category or "", m.cosine, m.image or m.path) for m in matches]
    click.echo(table(("rank", "product", "category", "cosine", "reference image"), rows, align="rllrl"))


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="CATALOGUE_HOST",
    help="Address to listen on; 0.0.0.0 for every interface [env CATALOGUE_HOST].",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    envvar="CATALOGUE_PORT",
    help="Port [env CATALOGUE_PORT].",
)
@click.option(
    "--model", envvar=MODEL_ENV_VAR, help=f"Must match the collection's model; default: the collection's [env {MODEL_ENV_VAR}]."
)
@device_option
@click.option(
    "--locate",
    type=click.Choice(["centre", "none", "proposals", "owlv2"]),
    default="centre",
    show_default=True,
    envvar="CATALOGUE_LOCATE",
    help="Default localiser; a request may ask for centre, none or proposals.",
)
@click.option("--detector", default=None, metavar="ID_OR_PATH", help="OWLv2 checkpoint for --locate owlv2.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT[=CATEGORY]", help="What --locate owlv2 looks for. Repeatable.")
@click.option(
    "--max-products",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Most products reported per photo by proposals/owlv2.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    envvar="CATALOGUE_WORKERS",
    help="Searches run at once (their model forwards are batched together).",
)
@click.option(
    "--queue",
    type=click.IntRange(0, 10_000),
    default=16,
    show_default=True,
    envvar="CATALOGUE_QUEUE",
    help="Searches waiting beyond the workers; past that, 503 with Retry-After at once.",
)
@click.option(
    "--model-threads",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Threads of one ONNX model forward; concurrent searches use the other cores (1 measured best under load).",
)
@click.option(
    "--max-batch", type=click.IntRange(1, 512), default=32, show_default=True, help="Most images in one shared model forward."
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0, 100),
    default=2.0,
    show_default=True,
    help="How long a forward waits for other searches to join it.",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0.01, 1024),
    default=25.0,
    show_default=True,
    envvar="CATALOGUE_MAX_UPLOAD_MB",
    help="Largest photo accepted (413 beyond) [env CATALOGUE_MAX_UPLOAD_MB].",
)
@click.option(
    "--upload-budget-mb",
    type=click.FloatRange(0.01, 65536),
    default=128.0,
    show_default=True,
    envvar="CATALOGUE_UPLOAD_BUDGET_MB",
    help="Bytes all uploads in flight may hold together; past it, 503 before a body is read [env CATALOGUE_UPLOAD_BUDGET_MB].",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    envvar="CATALOGUE_READ_TIMEOUT_S",
    help="Seconds a client has to send a whole request body (408 after) [env CATALOGUE_READ_TIMEOUT_S].",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Allow pages from this origin to call the API (off by default). Repeatable.",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's private key (PEM).")
@click.option(
    "--watch",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep the collection in sync with this DAM folder while serving (new, changed and deleted images within seconds).",
)
@click.option(
    "--watch-interval",
    type=click.FloatRange(0.2, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between looks at the --watch folder.",
)
@max_delete_option
@click.option(
    "--stop-grace",
    type=click.FloatRange(0, 600),
    default=5.0,
    show_default=True,
    help="On Ctrl-C or SIGTERM, seconds running searches get to finish (waiting ones get 503 at once).",
)
@store_options
@reports_errors
def serve(
    host,
    port,
    model,
    device,
    runtime,
    dtype,
    locate,
    detector,
    prompts,
    max_products,
    workers,
    queue,
    model_threads,
    max_batch,
    batch_wait_ms,
    max_upload_mb,
    upload_budget_mb,
    read_timeout,
    cors_origins,
    tls_cert,
    tls_key,
    watch,
    watch_interval,
    max_delete,
    stop_grace,
    qdrant_path,
    qdrant_url,
    collection,
) -> None:
    """Serve search over HTTP: a JSON API and a page for store staff at /.

    Loads the models and opens the store once; answers /healthz at once and
    /readyz when ready. Protect it with CATALOGUE_API_KEY (clients send
    'Authorization: Bearer KEY'); the page asks for the key once. Staff
    confirmations (POST /v1/feedback: each becomes a store view that later
    searches match) take CATALOGUE_FEEDBACK_KEY when set, else the API key;
    with neither, only a server on loopback accepts them.

    \b
    Examples:
      search serve --qdrant-path ./store                 # then open http://127.0.0.1:8000/
      search serve --host 0.0.0.0 --tls-cert c.pem --tls-key k.pem
      search serve --watch ./dam                         # sync changes while serving
      curl -F image=@shelf.jpg http://127.0.0.1:8000/v1/search

    Ctrl-C or SIGTERM stops it: waiting searches get 503 at once, running
    ones get --stop-grace seconds, and it exits 0; a second signal exits at
    once (130 or 143).

    \b
    Exit codes: 0 stopped, 2 bad option or a --host not on this machine,
    4 the port is in use, 3/4/5/6 as for search image when the store or
    the models cannot be loaded.
    """
    import os

    from search.serve import ServeConfig, run

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("give --tls-cert and --tls-key together")
    if qdrant_path and qdrant_url:
        raise click.UsageError("give --qdrant-path or --qdrant-url, not both")
    detector_options = _detector_options(locate, detector, prompts, max_products)
    config = ServeConfig(
        qdrant_path=qdrant_path,
        qdrant_url=qdrant_url,
        qdrant_api_key=os.environ.get("QDRANT_API_KEY") or None,
        collection=collection,
        model=model,
        model_loading=model_loading(device, runtime, dtype),
        locate=locate,
        detector_options=detector_options,
        workers=workers,
        queue=queue,
        model_threads=model_threads,
        max_batch=max_batch,
        batch_wait=batch_wait_ms / 1000,
        watch=watch,
        watch_interval=watch_interval,
        max_delete=max_delete,
        stop_grace=stop_grace,
        host=host,
        port=port,
        api_key=os.environ.get("CATALOGUE_API_KEY") or None,
        feedback_key=os.environ.get("CATALOGUE_FEEDBACK_KEY") or None,
        max_upload_mb=max_upload_mb,
        upload_budget_mb=upload_budget_mb,
        read_timeout=read_timeout,
        cors_origins=cors_origins,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    code = run(config)
    raise SystemExit(code)


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
@reports_errors
def synthesize(dam, out, count, seed, view_seed, as_json, quiet) -> None:
    """Make store-like test photos from the catalogue images in DAM, with their ground truth.

    Each photo is one catalogue product cut out of its backdrop, shrunk,
    tilted, relit, blurred and placed among other catalogue products on a
    shelf-like wall. OUT receives the photos and ground_truth.csv, ready for
    `search eval --queries OUT --ground-truth OUT/ground_truth.csv`.

    Real store photos are harder (other viewpoints, reflections, the real
    product rather than its catalogue pixels): use these to compare settings,
    not to promise accuracy.
    """
    from indexer.cli_common import progress_bar
    from search.synthetic import write_synthetic_queries

    with progress_bar(count, "synthesizing", enabled=not quiet) as bar:
        written = write_synthetic_queries(dam, out, count=count, seed=seed, view_seed=view_seed, progress=bar.update)
    if as_json:
        emit_json(
            {
                "photos": written,
                "folder": str(out),
                "ground_truth": str(out / "ground_truth.csv"),
                "seed": seed,
                "view_seed": view_seed,
            }
        )
    else:
        click.echo(f"Wrote {written} photos and {out / 'ground_truth.csv'}")


if __name__ == "__main__":
    main()
