"""Throughput of `indexer sync` against a naive loop, measured in the same run on the same images.

    python benchmarks/sync_throughput.py ../shared/data/dam --model efficientnet-lite0 --limit 600

Prints images/s of:
  baseline   read, decode, preprocess and embed one image at a time, one thread (what a
             first script would do), colours included so both do the same work;
  sync       the real first sync into a fresh embedded store (worker threads, batches, upserts);
  re-sync    the same sync again with nothing changed: seconds in the library and for the
             whole `indexer sync` process (interpreter start and imports included).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dam", type=Path)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--limit", type=int, default=600, help="images used (copied to a temp folder)")
    parser.add_argument("--baseline-limit", type=int, default=150, help="images for the slow baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"], help="as indexer sync's --runtime")
    args = parser.parse_args()

    from indexer.colour import extract_palette
    from indexer.encoders import default_cache_dir, load_encoder
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
        sources = scanned.images
        encoders = [
            load_encoder(m, device=args.device, runtime=args.runtime, cache_dir=default_cache_dir())
            for m in args.model.split(",")
        ]

        # Baseline: one image at a time, one thread.
        t = time.perf_counter()
        for source in sources[: args.baseline_limit]:
            image = load_rgb(source.path)
            extract_palette(image)
            for encoder in encoders:
                encoder.embed_batch([encoder.preprocess(image)])
        baseline = args.baseline_limit / (time.perf_counter() - t)

        store = work / "qdrant"
        handle = open_store(path=store, create=True)
        loader = {e.model_id: e for e in encoders}
        report = sync(
            dam,
            scanned,
            handle.collection("catalogue"),
            model=args.model,
            encoder_loader=lambda m, **_: loader[m],
            device=args.device,
        )
        first = report.to_dict()
        t = time.perf_counter()
        again = sync(dam, scan(dam), handle.collection("catalogue"))
        resync_library = time.perf_counter() - t
        handle.close()
        assert again.unchanged == len(sources) and again.encoded == 0

        process_times = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "indexer.cli", "sync", str(dam), "--qdrant-path", str(store), "-q"],
                check=True,
                capture_output=True,
            )
            process_times.append(time.perf_counter() - t)

        print(f"images: {len(sources)}  model: {args.model}  device: {encoders[0].device}  runtime: {type(encoders[0]).__name__}")
        print(f"baseline (serial, batch 1)  {baseline:7.1f} images/s   ({args.baseline_limit} images)")
        print(
            f"indexer sync, first run     {first['images_per_second']:7.1f} images/s   x{first['images_per_second'] / baseline:.2f} the baseline"
        )
        print(
            "  stage seconds (worker stages summed over threads): "
            + ", ".join(f"{k} {v:.1f}" for k, v in first["stages"].items())
        )
        print(
            f"re-sync, nothing changed    {resync_library * 1000:7.0f} ms in the library; whole process: "
            f"{statistics.median(process_times):.2f} s (median of 3)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
