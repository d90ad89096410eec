"""The README's one-query form (a prefetch by cosine, then the colour formula), run by the embedded engine.

The product never sends this query: `search image` re-scores its candidates in
numpy (search/rescore.py), which also fuses several encoders and groups by
product. Other services send the formula JSON to a Qdrant server instead.
Qdrant Edge is the server's engine, so running the same JSON through it here
proves that the README's query ranks like `search image` (tests/test_search.py)
and lets benchmarks/store_scale.py time that form. Edge's Python API takes
expression objects, not the REST JSON: `expression` translates.
"""

from __future__ import annotations

from collections.abc import Sequence

from indexer.store import Hit
from indexer.store.schema import CANDIDATE_FIELDS


def formula_query(
    catalogue, vector, using: str, candidates: int, formula: dict, limit: int, fields: Sequence[str] = CANDIDATE_FIELDS
):
    """The `candidates` nearest points of an embedded collection, re-scored by `formula` (REST form), best first."""
    import qdrant_edge as qe

    prefetch = qe.Prefetch(
        limit=candidates,
        query=qe.Query.Nearest([float(x) for x in vector], using=using),
        params=catalogue._params(candidates),  # the same HNSW breadth and quantization rescoring as the product's queries
    )
    request = qe.QueryRequest(
        limit=limit,
        prefetches=[prefetch],
        query=qe.Formula(expression(formula["formula"]), defaults=formula.get("defaults")),
        with_payload=list(fields),
    )
    return [Hit(str(p.id), float(p.score), p.payload or {}) for p in catalogue._shard.query(request)]


def expression(node):
    """Qdrant's REST formula tree as Edge expression objects."""
    import qdrant_edge as qe

    E = qe.Expression
    if isinstance(node, bool):
        raise ValueError("booleans are not formula expressions")
    if isinstance(node, (int, float)):
        return E.Constant(float(node))
    if isinstance(node, str):
        return E.Variable(node)
    [(op, arg)] = node.items()
    if op in ("sum", "mult", "max", "min"):
        return getattr(E, op.capitalize())([expression(a) for a in arg])
    if op in ("sqrt", "neg", "abs", "exp", "ln", "log10"):
        return getattr(E, {"log10": "Log10"}.get(op, op.capitalize()))(expression(arg))
    if op == "pow":
        return E.Pow(expression(arg["base"]), expression(arg["exponent"]))
    if op == "div":
        return E.Div(expression(arg["left"]), expression(arg["right"]), arg.get("by_zero_default"))
    if op in ("lin_decay", "exp_decay", "gauss_decay"):
        kind = {"lin_decay": qe.DecayKind.Lin, "exp_decay": qe.DecayKind.Exp, "gauss_decay": qe.DecayKind.Gauss}[op]
        target = arg.get("target")
        return E.Decay(
            kind,
            expression(arg["x"]),
            target=None if target is None else expression(target),
            midpoint=arg.get("midpoint"),
            scale=arg.get("scale"),
        )
    raise ValueError(f"formula operation {op!r} is not supported here")
