"""Throughput of `indexer sync` against the bare model, in the same run, on the same images.

    python benchmarks/sync_throughput.py ../shared/data/dam --model efficientnet-lite0 --limit 600

For the model(s) given (comma-separated: an ensemble), prints:
  bare model  images/s of the encoders alone on pre-processed batches (no reading, decoding,
              colours or preprocessing), measured before and after the sync, and the model's
              process CPU per image;
  sync        the real first sync into a fresh embedded store: images/s and its share of the
              bare model;
  outside     CPU per image outside the model: the sync's process CPU time minus the model's
              own (the bare runs' CPU per image), and per stage (CPU time of the worker threads);
  re-sync     the same sync again with nothing changed: in the library and as a whole process.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare(encoders, inputs: list[list], images: int) -> tuple[float, float]:
    """(images/s, process CPU seconds per image) of the encoders alone over `images` pre-processed inputs."""
    batch = max(e.batch_size for e in encoders)
    wall, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < images:
        n = min(batch, images - done)
        for i, encoder in enumerate(encoders):
            encoder.embed_batch([inputs[(done + j) % len(inputs)][i] for j in range(n)])
        done += n
    return images / (time.perf_counter() - wall), (time.process_time() - cpu) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dam", type=Path)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--limit", type=int, default=600, help="images used (copied to a temp folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"], help="as indexer sync's --runtime")
    parser.add_argument("--workers", type=int, default=None, help="as indexer sync's --workers")
    parser.add_argument("--model-threads", type=int, default=None, help="threads of one ONNX forward (default: every core)")
    args = parser.parse_args()

    from indexer.encoders import default_cache_dir, load_encoder, parse_models
    from indexer.images import load_rgb
    from indexer.scan import scan
    from indexer.store import open_store
    from indexer.sync import sync

    work = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    try:
        dam = work / "dam"
        dam.mkdir()
        for source in scan(args.dam).images[: args.limit]:
            shutil.copy(source.path, dam / source.path.name)
        scanned = scan(dam)
        count = len(scanned.images)
        models = parse_models(args.model)
        encoders = [
            load_encoder(m, device=args.device, runtime=args.runtime, cache_dir=default_cache_dir(), threads=args.model_threads)
            for m in models
        ]
        inputs = [[e.preprocess(load_rgb(s.path)) for e in encoders] for s in scanned.images[:64]]
        bare(encoders, inputs, 64)  # warm-up
        before, model_cpu_before = bare(encoders, inputs, count)

        store = work / "qdrant"
        handle = open_store(path=store, create=True)
        loader = {e.model_id: e for e in encoders}
        options = {"workers": args.workers} if args.workers else {}
        cpu = time.process_time()
        report = sync(
            dam, scanned, handle.collection("catalogue"), model=args.model, encoder_loader=lambda m, **_: loader[m], **options
        )
        sync_cpu = time.process_time() - cpu
        first = report.to_dict()
        after, model_cpu_after = bare(encoders, inputs, count)
        t = time.perf_counter()
        again = sync(dam, scan(dam), handle.collection("catalogue"))
        resync_library = time.perf_counter() - t
        handle.close()
        assert again.unchanged == count and again.encoded == 0

        process_times = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "indexer.cli", "sync", str(dam), "--qdrant-path", str(store), "-q"],
                check=True,
                capture_output=True,
            )
            process_times.append(time.perf_counter() - t)

        bare_rate = (before + after) / 2
        model_cpu = (model_cpu_before + model_cpu_after) / 2
        outside = sync_cpu / count - model_cpu
        stages = {k: v for k, v in first["stages"].items() if k in ("read", "decode", "colour", "preprocess")}
        print(f"images: {count}  model: {args.model}  device: {encoders[0].device}  runtime: {type(encoders[0]).__name__}")
        print(
            f"bare model                 {bare_rate:7.1f} images/s ({before:.1f} before the sync, {after:.1f} after); "
            f"{model_cpu * 1000:.1f} ms of process CPU per image"
        )
        print(
            f"indexer sync, first run    {first['images_per_second']:7.1f} images/s   {first['images_per_second'] / bare_rate:.0%} of the bare model"
        )
        print(
            f"CPU outside the model      {outside * 1000:7.1f} ms per image (process CPU {sync_cpu / count * 1000:.1f} ms minus the model's "
            f"{model_cpu * 1000:.1f}); per stage (worker threads' CPU): "
            + ", ".join(f"{k} {v / count * 1000:.2f}" for k, v in stages.items())
            + " ms"
        )
        print(
            f"re-sync, nothing changed   {resync_library * 1000:7.0f} ms in the library; whole process: {statistics.median(process_times):.2f} s (median of 3)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
