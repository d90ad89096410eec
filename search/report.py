"""A self-contained HTML page of an evaluation: people would rather look than read.

Summary table of every setting at the top, then one row per photo: the photo,
its top-k catalogue images with product id and score breakdown, correct ones
framed green, and the expected product (with its rank) when it was missed.
Thumbnails are embedded as data URIs so the file opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from indexer.errors import BadInputError
from indexer.images import load_rgb
from indexer.store.schema import STORE_SOURCE
from search.evaluate import Evaluation

PHOTO_SIDE = 220
CATALOGUE_SIDE = 120


def thumbnail_uri(path: str | Path | None, side: int) -> str | None:
    if not path:
        return None
    try:
        image = load_rgb(path, draft=side)
    except BadInputError:
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_report(
    evaluation: Evaluation,
    output: Path,
    *,
    shown_setting: str,
    reference_images: dict[str, str],
    title: str = "catalogue-indexer evaluation",
) -> None:
    """Write the page to `output`; `reference_images` maps product id -> an absolute image path."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        (
            f"<p>{len(evaluation.results)} photos, {evaluation.seconds:.1f} s. "
            f"Rows below use <b>{e(shown_setting)}</b>; green frame = correct product.</p>"
        ),
        _summary_table(evaluation, evaluation.settings[:2]),
    ]
    if len(evaluation.settings) > 2:
        best = evaluation.best([s for s in evaluation.settings if s.colour] or evaluation.settings)
        parts.append(f"<p>Best of the sweep: <b>{e(best.name)}</b></p>")
        parts.append(
            f"<details><summary>All {len(evaluation.settings)} settings</summary>{_summary_table(evaluation, evaluation.settings)}</details>"
        )
    if evaluation.skipped or evaluation.missing_references:
        parts.append("<h2>Not evaluated</h2><ul>")
        parts += [f"<li>{e(q)}: {e(why)}</li>" for q, why in evaluation.skipped]
        parts += [f"<li>{e(q)}: reference {e(ref)} is not in the collection</li>" for q, ref in evaluation.missing_references]
        parts.append("</ul>")
    parts.append("<h2>Photos</h2>")
    for result in evaluation.results:
        rank = result.ranks.get(shown_setting)
        matches = result.top.get(shown_setting, [])
        verdict = "correct" if rank == 1 else (f"rank {rank}" if rank else "not found")
        parts.append(f"<section class='query {'ok' if rank == 1 else 'miss'}'>")
        parts.append(
            f"<figure class='photo'>{_img(thumbnail_uri(result.photo, PHOTO_SIDE), result.query)}"
            f"<figcaption><b>{e(result.query)}</b><br>{e(verdict)}<br>expected {e(', '.join(result.expected))}</figcaption></figure>"
        )
        parts.append("<div class='matches'>")
        for match in matches:
            correct = match.product_id in result.expected
            view = match.source == STORE_SOURCE
            parts.append(
                f"<figure class='match{' correct' if correct else ''}{' view' if view else ''}'>"
                f"{_img(thumbnail_uri(match.image, CATALOGUE_SIDE), match.product_id)}"
                f"<figcaption>#{match.rank} <b>{e(match.product_id)}</b>{'<br><i>through a store view</i>' if view else ''}<br>"
                f"{match.score:.3f} = {match.cosine:.3f} + {match.colour_bonus:.3f}</figcaption></figure>"
            )
        if rank is None or rank > len(matches):
            for product in result.expected[:1]:
                parts.append(
                    f"<figure class='match expected'>{_img(thumbnail_uri(reference_images.get(product), CATALOGUE_SIDE), product)}"
                    f"<figcaption>expected <b>{e(product)}</b><br>{'rank ' + str(rank) if rank else 'not in results'}</figcaption></figure>"
                )
        parts.append("</div></section>")
    parts.append("</body></html>")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(parts), encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot write the report to {output}: {exc.strerror or exc}") from None


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f"<div class='noimg'>{html.escape(alt)}<br>(image unavailable)</div>"
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"


def _summary_table(evaluation: Evaluation, settings) -> str:
    ks = evaluation.ks
    head = "".join(f"<th>top-{k}</th>" for k in ks)
    rows = []
    for setting in settings:
        m = evaluation.metrics(setting.name)
        cells = "".join(f"<td>{m[f'top{k}']:.1%}</td>" for k in ks)
        median = "-" if m["median_rank"] is None else f"{m['median_rank']:g}"
        rows.append(f"<tr><td>{html.escape(setting.name)}</td>{cells}<td>{m['mrr']:.3f}</td><td>{median}</td></tr>")
    return f"<table class='summary'><tr><th>setting</th>{head}<th>MRR</th><th>median rank</th></tr>{''.join(rows)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table.summary{border-collapse:collapse;margin-bottom:16px}
table.summary td,table.summary th{border:1px solid #ccc;padding:4px 10px;text-align:right}
table.summary td:first-child{text-align:left}
section.query{display:flex;gap:16px;align-items:flex-start;border-top:1px solid #ddd;padding:12px 0}
section.miss .photo figcaption{color:#b00}
figure{margin:0;font-size:12px;text-align:center}
.photo img{max-width:220px;max-height:220px}
.matches{display:flex;flex-wrap:wrap;gap:8px}
.match{width:128px;border:4px solid transparent;padding:2px}
.match img{width:120px;height:120px;object-fit:contain;background:#fff}
.match.correct{border-color:#1a9e3a}
.match.expected{border-color:#e0a000;border-style:dashed}
.match.view figcaption i{color:#6a3fb5}
.noimg{width:120px;height:120px;background:#eee;display:flex;align-items:center;justify-content:center}
"""
