"""`search eval`: labelled photos through the search pipeline, and how well it named them."""

from __future__ import annotations

from pathlib import Path

import click

from catalogue_cli.options import (
    LocateOptions,
    ModelOptions,
    StoreOptions,
    locate_options,
    model_options,
    option_group,
    search_options,
    store_options,
)
from catalogue_cli.output import emit_json, progress_bar, table
from catalogue_cli.stores import open_catalogue, searcher


def _floats(value: str, name: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers", param_hint=name) from None


def _cutoffs(_ctx, _param, value: str) -> tuple[int, ...]:
    cutoffs = tuple(sorted({int(k) for k in _floats(value, "--k") if k >= 1}))
    if not cutoffs:
        raise click.BadParameter("give at least one k >= 1", param_hint="--k")
    return cutoffs


def _grid(sweep: bool, alphas: str, thresholds: str) -> tuple[list[float], list[float]] | None:
    """The (alphas, thresholds) grid of --sweep, or None without it."""
    return (_floats(alphas, "--alphas"), _floats(thresholds, "--thresholds")) if sweep else None


sweep_options = option_group(
    "grid",
    _grid,
    [
        click.option("--sweep", is_flag=True, help="Also rank under every --alphas x --thresholds pair and report the best."),
        click.option("--alphas", default="0.01,0.02,0.05,0.1,0.2,0.3", show_default=True, help="Alpha grid for --sweep."),
        click.option("--thresholds", default="10,20,30,40,60", show_default=True, help="Threshold grid for --sweep."),
    ],
)


@click.command(name="eval")
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
@search_options
@model_options()
@locate_options
@click.option("--k", "cutoffs", default="1,5,10", show_default=True, callback=_cutoffs, help="Cut-offs for top-k accuracy.")
@sweep_options
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), help="Write a self-contained HTML report here.")
@click.option(
    "--calibrate", is_flag=True, help="Fit the 'no confident match' calibration on these photos and store it in the collection."
)
@click.option(
    "--compare-with",
    "other",
    metavar="COLLECTION",
    help="Also measure this collection of the same store (a re-index built beside the live one, with its own "
    "models) on the same photos, and show both side by side.",
)
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON, per-query ranks included.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(
    queries: Path | None,
    ground_truth: Path | None,
    use_feedback: bool,
    options,
    model: ModelOptions,
    locate: LocateOptions,
    cutoffs: tuple[int, ...],
    grid,
    report: Path | None,
    calibrate: bool,
    other: str | None,
    store: StoreOptions,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure how well search names the products in labelled photos.

    Every photo in --queries with a row in --ground-truth (or, with
    --feedback, every store photo staff confirmed or said is not in the
    catalogue) goes through the same pipeline as `search image`. Reports top-k accuracy, MRR, median rank
    of the first correct product, mean top-1 cosine of right and wrong
    answers, per-category accuracy, with and without colour re-scoring, and
    with --sweep the best alpha/threshold of a grid (photos are encoded once).

    With --compare-with NEW, the same photos are also measured on the
    collection NEW (its own models): a re-index built beside the live one
    (indexer sync --into NEW) is judged before `indexer live NEW`.

    \b
    Exit codes: 0 done, 3 bad input (folder, CSV, nothing to evaluate),
    4 store unavailable, 5 model mismatch.
    """
    from search.evaluate import read_ground_truth, run_evaluation

    if use_feedback == bool(queries or ground_truth) or (not use_feedback and not (queries and ground_truth)):
        raise click.UsageError("give --queries with --ground-truth, or --feedback")
    if other and calibrate:
        raise click.UsageError("--calibrate fits one collection: run it without --compare-with")
    truth = None if use_feedback else read_ground_truth(ground_truth)
    pipeline = searcher(open_catalogue(store), model, locate)
    labelled, skipped, source = _labelled(pipeline, queries, truth)
    with progress_bar(len(labelled), "evaluating", enabled=not quiet) as bar:
        run = run_evaluation(
            pipeline,
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

        write_report(run.evaluation, report, shown_setting=run.shown, reference_images=pipeline.reference_images())
        click.echo(f"Report written to {report}", err=True)
    compared = (
        _compared(pipeline, other, model, locate, labelled, options, cutoffs, grid, skipped, source, quiet) if other else None
    )
    if as_json:
        emit_json({**run.to_dict(pipeline), **({"compared": compared[0].to_dict(compared[1])} if compared else {})})
        return
    _print_evaluation(run.evaluation, store.collection, pipeline, run.shown, run.best, sweep=grid is not None)
    _print_confidence(run, options.min_confidence, store.collection)
    if compared:
        _print_side_by_side([(pipeline, run), (compared[1], compared[0])], cutoffs)


def _compared(
    pipeline, other: str, model: ModelOptions, locate: LocateOptions, labelled, options, cutoffs, grid, skipped, source, quiet
):
    """(the run, its searcher) of the same photos on collection `other` of the same store, with its own models."""
    from dataclasses import replace

    from search.evaluate import run_evaluation

    catalogue = pipeline.catalogue.store.collection(other)
    other_pipeline = searcher(catalogue, replace(model, model=None), locate)
    with progress_bar(len(labelled), f"evaluating {other}", enabled=not quiet) as bar:
        run = run_evaluation(
            other_pipeline, labelled, options, ks=cutoffs, sweep=grid, skipped=list(skipped), source=source, progress=bar.update
        )
    return run, other_pipeline


def _print_side_by_side(runs, ks: tuple[int, ...]) -> None:
    """The shown setting's figures of each collection, one column each."""
    metrics = [run.evaluation.metrics(run.shown) for _, run in runs]
    rows = [[f"top-{k}"] + [f"{m[f'top{k}']:.1%}" for m in metrics] for k in ks]
    rows.append(["MRR"] + [f"{m['mrr']:.3f}" for m in metrics])
    rows.append(["median rank"] + ["-" if m["median_rank"] is None else f"{m['median_rank']:g}" for m in metrics])
    rows.append(["confidence AUC"] + ["-" if not run.confidence else f"{run.confidence['auc']:.3f}" for _, run in runs])
    headers = [""] + [f"{p.catalogue.name} ({', '.join(s.model for s in p.specs)})" for p, _ in runs]
    click.echo("\nSide by side, the same photos:\n" + table(headers, rows, align="l" + "r" * len(runs)))


def _labelled(pipeline, queries: Path | None, truth) -> tuple[list, list, str]:
    """The labelled photos, those skipped, and where they come from: a folder and its ground truth, or
    (`truth` None) the photos staff confirmed."""
    from indexer.errors import BadInputError
    from search.evaluate import feedback_queries, folder_queries

    if truth is not None:
        labelled, skipped = folder_queries(queries, truth)
        return labelled, skipped, f"photos in {queries}"
    from indexer.feedback import FeedbackLog

    log = FeedbackLog.of(pipeline.catalogue.store, pipeline.catalogue.name)
    labelled = feedback_queries(log.entries(newest_first=False))
    if not labelled:
        raise BadInputError(f"no feedback in {log.folder} yet: confirm answers first (indexer feedback add, the page)")
    return labelled, [], f"confirmed photos in {log.folder}"


def _print_confidence(run, min_confidence: float, collection: str) -> None:
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


def _print_evaluation(evaluation, collection, searcher, shown, best, sweep: bool) -> None:
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
