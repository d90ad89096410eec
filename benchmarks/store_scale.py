"""How the store scales: synthetic catalogue points through the store gateway, as sync and search use it.

    python benchmarks/store_scale.py                         # 10k and 100k, embedded engine, local mode at 10k as baseline
    python benchmarks/store_scale.py --sizes 1000000 --quantization int8 --baseline-max 0

Points are 512-d (FashionCLIP's size) with this tool's payload (product_id,
path, category, file, colour.dominant and palette). Vectors are clustered
like real embeddings: 2,000 product families, each point its family's centre
plus noise, unit length. Queries are points of the collection with more noise
added (a store photo of a catalogue product), so exact search has real
neighbours to find and HNSW's recall is measured on data shaped like ours,
not on uniform noise (its worst case).

Each size runs in two fresh processes: one builds (upserts in batches of 256,
then the index build a sync ends with), one opens the store and queries. For
each it prints:
  upsert      points/s through `Catalogue.upsert`
  index       seconds of `Catalogue.build_index` (HNSW, quantization)
  open        seconds from nothing to the first answered query's store being open
  query p50/95  the 100 nearest by cosine, then the colour formula (prefetch + formula: the
              one query of docs/schema.md; `search image` re-scores the same 100 in numpy)
  recall@10   of the cosine top 10 against exact search (numpy, same vectors)
  RSS         peak resident memory of the build and of the query process (ru_maxrss)
  peaks       per build phase (upsert, index), sampled from the parent: anonymous pages
              (RssAnon, the memory the build needs), pages of mapped store files (RssFile,
              which the kernel drops under pressure) and VmHWM (what ru_maxrss reports)
The baseline is the previous embedded backend (qdrant-client local mode) on the
same points, in the same run, up to --baseline-max points (it takes minutes at 100k).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIM = 512
FAMILIES = 2000
NOISE = 0.7
QUERY_NOISE = 0.5
BATCH = 256
CANDIDATES = 100


_CENTRES = {}


def vectors(start: int, count: int, seed: int = 0):
    """Points start..start+count of the synthetic collection: the same values however they are sliced."""
    import numpy as np

    if seed not in _CENTRES:
        _CENTRES[seed] = np.random.default_rng(seed).normal(size=(FAMILIES, DIM)).astype(np.float32)
    centres = _CENTRES[seed]
    noise = []
    for block in range(start // BATCH, (start + count - 1) // BATCH + 1):  # noise drawn per aligned block of BATCH points
        drawn = np.random.default_rng([seed, block]).normal(size=(BATCH, DIM)).astype(np.float32)
        lo, hi = max(start, block * BATCH) - block * BATCH, min(start + count, (block + 1) * BATCH) - block * BATCH
        noise.append(drawn[lo:hi])
    family = (np.arange(start, start + count) * 7919) % FAMILIES
    points = centres[family] + NOISE * np.concatenate(noise)
    return points / np.linalg.norm(points, axis=1, keepdims=True), family


def payload(i: int, family: int) -> dict:
    lab = [30.0 + (family % 60), float((family * 13) % 100 - 50), float((family * 29) % 100 - 50)]
    return {
        "product_id": f"P{family:05d}",
        "path": f"dam/{family % 97:02d}/P{family:05d}_{i}.jpg",
        "category": f"C{family % 12}",
        "meta": {},
        "file": {"size": 20000 + i, "mtime_ns": 1_700_000_000_000_000_000 + i, "sha256": f"{i:064x}"},
        "colour": {
            "dominant": {"L": lab[0], "a": lab[1], "b": lab[2]},
            "palette": [{"L": lab[0], "a": lab[1], "b": lab[2], "weight": 0.6}, {"L": 90.0, "a": 0.0, "b": 0.0, "weight": 0.4}],
            "foreground": 0.5,
        },
    }


def queries(size: int, count: int):
    import numpy as np

    rng = np.random.default_rng(12345)
    picked = rng.choice(size, count, replace=False)
    out = []
    for i in picked:
        point, _ = vectors(int(i), 1)
        q = point[0] + QUERY_NOISE * rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
        out.append(q / np.linalg.norm(q))
    return np.stack(out)


def exact_top10(size: int, qs):
    import numpy as np

    best = np.full((len(qs), 10), -2.0, dtype=np.float32)
    ids = np.zeros((len(qs), 10), dtype=np.int64)
    for start in range(0, size, 50_000):
        block, _ = vectors(start, min(50_000, size - start))
        scores = qs @ block.T
        cat_scores = np.concatenate([best, scores], axis=1)
        cat_ids = np.concatenate([ids, np.broadcast_to(np.arange(start, start + len(block)), scores.shape)], axis=1)
        order = np.argsort(-cat_scores, axis=1)[:, :10]
        best = np.take_along_axis(cat_scores, order, axis=1)
        ids = np.take_along_axis(cat_ids, order, axis=1)
    return ids


# -- phases, each in its own process ------------------------------------------------------


def build(engine: str, folder: Path, size: int, quantization: str, on_disk: bool) -> dict:
    from indexer.store import point_id

    started = time.perf_counter()
    upsert_seconds = 0.0
    if engine == "edge":
        from indexer.store import ModelSpec, Point, StorageSettings, open_store

        print("phase upsert", flush=True)
        store = open_store(path=folder, create=True)
        catalogue = store.collection("catalogue")
        catalogue.create(
            [ModelSpec("bench", DIM)], root="/", settings=StorageSettings(quantization=quantization, on_disk=on_disk)
        )
        for start in range(0, size, BATCH):
            block, family = vectors(start, min(BATCH, size - start))
            batch = [
                Point(point_id(str(start + j)), {"bench": v}, payload(start + j, int(f)))
                for j, (v, f) in enumerate(zip(block, family))
            ]
            t = time.perf_counter()
            catalogue.upsert(batch)
            upsert_seconds += time.perf_counter() - t
        print("phase index", flush=True)
        t = time.perf_counter()
        catalogue.build_index()
        index_seconds = time.perf_counter() - t
        store.close()
    else:
        import warnings

        from qdrant_client import QdrantClient
        from qdrant_client import models as qm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = QdrantClient(path=str(folder))
            client.create_collection(
                "catalogue", vectors_config={"bench": qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)}
            )
            for start in range(0, size, BATCH):
                block, family = vectors(start, min(BATCH, size - start))
                batch = [
                    qm.PointStruct(id=point_id(str(start + j)), vector={"bench": v.tolist()}, payload=payload(start + j, int(f)))
                    for j, (v, f) in enumerate(zip(block, family))
                ]
                t = time.perf_counter()
                client.upsert("catalogue", points=batch)
                upsert_seconds += time.perf_counter() - t
            client.close()
        index_seconds = 0.0
    return {
        "upsert_per_s": size / upsert_seconds,
        "index_s": index_seconds,
        "build_s": time.perf_counter() - started,
        "build_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **_memory_now(),
    }


def _memory_now() -> dict:
    """Resident memory now, split into anonymous pages (the process's own) and file pages (mapped store
    files, which the kernel can drop and read again); the peak RSS printed counts both."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = round(int(value.split()[0]) / 1024)
    except OSError:
        pass
    return {"anon_mb": fields.get("RssAnon"), "file_mb": fields.get("RssFile")}


def query(engine: str, folder: Path, size: int, count: int, truth_file: Path) -> dict:
    import numpy as np

    from indexer.store import point_id
    from search.rescore import formula

    qs = queries(size, count)
    truth = np.load(truth_file)  # exact top 10, computed by the parent: its memory is not the store's
    id_of = {point_id(str(i)): i for i in np.unique(truth)}
    lab = np.array([50.0, 10.0, -5.0])
    t = time.perf_counter()
    if engine == "edge":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from edge_formula import formula_query  # the one query of docs/schema.md through the engine (the product ranks in numpy)

        from indexer.store import open_store

        store = open_store(path=folder)
        catalogue = store.collection("catalogue")
        catalogue.count()  # the collection is loaded by its first use
        opened = time.perf_counter() - t

        def production(q):
            return formula_query(catalogue, q, "bench", CANDIDATES, formula(lab, 0.05, 20.0), CANDIDATES)

        def top10(q):
            return [h.id for h in catalogue.nearest(q, "bench", 10, fields=())]
    else:
        import warnings

        from qdrant_client import QdrantClient
        from qdrant_client import models as qm

        warnings.simplefilter("ignore")
        client = QdrantClient(path=str(folder))
        opened = time.perf_counter() - t
        query_formula = qm.FormulaQuery.model_validate(formula(lab, 0.05, 20.0))

        def production(q):
            return client.query_points(
                "catalogue",
                prefetch=qm.Prefetch(query=q.tolist(), using="bench", limit=CANDIDATES),
                query=query_formula,
                limit=CANDIDATES,
                with_payload=["product_id", "path"],
            ).points

        def top10(q):
            return [str(p.id) for p in client.query_points("catalogue", query=q.tolist(), using="bench", limit=10).points]

    production(qs[0])  # first query: lazy structures
    latencies = []
    for q in qs:
        t = time.perf_counter()
        production(q)
        latencies.append((time.perf_counter() - t) * 1000)
    hits = sum(len({id_of.get(h, -1) for h in top10(q)} & set(truth[n].tolist())) for n, q in enumerate(qs))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "open_s": opened,
        "p50_ms": statistics.median(latencies),
        "p95_ms": float(np.percentile(latencies, 95)),
        "recall10": hits / (10 * len(qs)),
        "query_rss_mb": rss,
        **_memory_now(),
    }


def run_phase(*args: str) -> dict:
    """One phase in its own process, its memory sampled from here (the engine's calls hold the child's GIL)."""
    from edge_build_memory import Sampler  # the same sampler as the engine-only script, beside this one

    errors = tempfile.TemporaryFile("w+")
    child = subprocess.Popen([sys.executable, __file__, "--phase", *args], stdout=subprocess.PIPE, stderr=errors, text=True)
    sampler = Sampler(child.pid)
    sampler.start()
    lines = []
    for line in child.stdout:
        if line.startswith("phase "):
            sampler.sample()
            sampler.phase = line.split()[1]
        else:
            lines.append(line)
    sampler.running = False
    if child.wait() != 0:
        errors.seek(0)
        raise SystemExit(f"phase {args[0]} failed:\n{errors.read()[-2000:]}")
    result = json.loads(lines[-1])
    result["peaks"] = {phase: {k: v for k, v in peak.items() if k != "files"} for phase, peak in sampler.peaks.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--on-disk", action="store_true")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-max", type=int, default=10_000, help="largest size also run on qdrant-client local mode")
    parser.add_argument("--workdir", type=Path, default=None, help="where stores are built (default: a temp folder)")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        name, engine, folder, size, *rest = args.phase
        if name == "build":
            result = build(engine, Path(folder), int(size), rest[0], rest[1] == "1")
        else:
            result = query(engine, Path(folder), int(size), int(rest[0]), Path(rest[1]))
        print(json.dumps(result))
        return

    import numpy as np

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="store-scale-", dir=args.workdir))
    rows = []
    try:
        for size in args.sizes:
            truth = work / f"truth-{size}.npy"
            np.save(truth, exact_top10(size, queries(size, args.queries)))
            engines = ["edge"] + (["local mode"] if size <= args.baseline_max else [])
            for engine in engines:
                folder = work / f"{engine.replace(' ', '-')}-{size}"
                code = "edge" if engine == "edge" else "local"
                built = run_phase("build", code, str(folder), str(size), args.quantization, "1" if args.on_disk else "0")
                queried = run_phase("query", code, str(folder), str(size), str(args.queries), str(truth))
                rows.append((size, engine, built, queried))
                peaks = "; ".join(
                    f"{phase} {p['anon']:,}/{p['file']:,}/{p['hwm']:,}" for phase, p in built["peaks"].items() if phase != "start"
                )
                print(f"{size:>9,} {engine:10s} build peaks anonymous/file/VmHWM MB: {peaks}", flush=True)
                print(
                    f"{size:>9,} {engine:10s} upsert {built['upsert_per_s']:8.0f}/s  index {built['index_s']:6.1f} s  "
                    f"open {queried['open_s']:5.2f} s  query p50 {queried['p50_ms']:6.1f} ms p95 {queried['p95_ms']:6.1f} ms  "
                    f"recall@10 {queried['recall10']:.3f}  RSS build {built['build_rss_mb']:.0f} MB, query {queried['query_rss_mb']:.0f} MB; "
                    f"at the end anonymous/file pages: build {built['anon_mb']}/{built['file_mb']} MB, query {queried['anon_mb']}/{queried['file_mb']} MB",
                    flush=True,
                )
                shutil.rmtree(folder, ignore_errors=True)
        print(
            f"\n512-d, quantization {args.quantization}, vectors {'on disk' if args.on_disk else 'in memory'}, {args.queries} queries"
        )
        print("| points | engine | upsert | index build | open | query p50 / p95 | recall@10 | peak RSS build / query |")
        print("|---|---|---|---|---|---|---|---|")
        for size, engine, b, q in rows:
            print(
                f"| {size:,} | {engine} | {b['upsert_per_s']:,.0f}/s | {b['index_s']:.1f} s | {q['open_s']:.2f} s | "
                f"{q['p50_ms']:.1f} / {q['p95_ms']:.1f} ms | {q['recall10']:.3f} | {b['build_rss_mb']:,.0f} / {q['query_rss_mb']:,.0f} MB |"
            )
        baseline = {(s, e): q for s, e, _b, q in rows}
        for size in args.sizes:
            if (size, "local mode") in baseline:
                edge, local = baseline[(size, "edge")], baseline[(size, "local mode")]
                print(
                    f"at {size:,}: the embedded engine opens x{local['open_s'] / edge['open_s']:.0f} faster and answers "
                    f"x{local['p50_ms'] / edge['p50_ms']:.0f} faster (p50) than local mode"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
