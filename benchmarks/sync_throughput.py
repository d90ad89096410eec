"""Throughput of `indexer sync` against the bare model, in the same run, on the same images.

    python benchmarks/sync_throughput.py ../shared/data/dam --model efficientnet-lite0 --limit 600

    python benchmarks/sync_throughput.py ../shared/data/dam --model vit-b32 --limit 300

`vit-b32`: CLIP ViT-B/32 (FashionCLIP's architecture: CLIPConfig's defaults, 512-d projection,
patch 32, 224 px) with random weights, saved once under the cache folder (the hub is out of reach).

For the model(s) given (comma-separated: an ensemble), prints:
  bare model  images/s of the encoders alone on pre-processed batches (no reading, decoding,
              colours or preprocessing) in its best configuration: the better of one forward
              at a time over every core (ONNX intra-op threads) and the encoder's lanes (one
              single-threaded forward per core, each on its own batch, as the sync runs them);
              both measured before and after the sync; and the model's process CPU per image;
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def bare(encoders, inputs: list[list], images: int, *, lanes: bool) -> tuple[float, float]:
    """(images/s, process CPU seconds per image) of the encoders alone over `images` pre-processed inputs:
    one batch at a time through `embed_batch`, or with `lanes` one batch per lane at once, as the sync does."""
    batch = max(e.batch_size for e in encoders)
    embedders = [e.lanes() if lanes else [e.embed_batch] for e in encoders]
    count = min(len(lane) for lane in embedders)
    starts = list(range(0, images, batch))

    def run(lane: int) -> None:
        for start in starts[lane::count]:
            n = min(batch, images - start)
            for i, embed in enumerate(embedders):
                embed[lane]([inputs[(start + j) % len(inputs)][i] for j in range(n)])

    wall, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(run, range(count)))
    return images / (time.perf_counter() - wall), (time.process_time() - cpu) / images


def best_bare(encoders, inputs: list[list], images: int) -> dict[str, tuple[float, float]]:
    return {mode: bare(encoders, inputs, images, lanes=mode == "lanes") for mode in ("one forward", "lanes")}


def random_vit_b32(folder: Path) -> str:
    """CLIP ViT-B/32 shapes (CLIPConfig's defaults) with random weights, saved like a hub checkpoint."""
    if not (folder / "config.json").exists():
        import torch
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        torch.manual_seed(0)
        CLIPModel(CLIPConfig(projection_dim=512)).save_pretrained(folder)
        CLIPImageProcessor().save_pretrained(folder)
    return str(folder)


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
        if "vit-b32" in args.model.split(","):
            vit = random_vit_b32(default_cache_dir() / "random-vit-b32")
            args.model = ",".join(vit if m == "vit-b32" else m for m in args.model.split(","))
        models = parse_models(args.model)
        encoders = [
            load_encoder(m, device=args.device, runtime=args.runtime, cache_dir=default_cache_dir(), threads=args.model_threads)
            for m in models
        ]
        inputs = [[e.preprocess(load_rgb(s.path)) for e in encoders] for s in scanned.images[:64]]
        for lanes in (False, True):
            bare(encoders, inputs, 64, lanes=lanes)  # warm-up
        before = best_bare(encoders, inputs, count)

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
        after = best_bare(encoders, inputs, count)
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

        rates = {mode: ((before[mode][0] + after[mode][0]) / 2, (before[mode][1] + after[mode][1]) / 2) for mode in before}
        best = max(rates, key=lambda mode: rates[mode][0])
        bare_rate, model_cpu = rates[best]
        outside = sync_cpu / count - model_cpu
        stages = {k: v for k, v in first["stages"].items() if k in ("read", "decode", "colour", "preprocess", "upsert")}
        print(f"images: {count}  model: {args.model}  device: {encoders[0].device}  runtime: {type(encoders[0]).__name__}")
        for mode, (rate, cpu_per_image) in rates.items():
            print(
                f"bare model, {mode:14s} {rate:7.1f} images/s ({before[mode][0]:.1f} before the sync, {after[mode][0]:.1f} "
                f"after); {cpu_per_image * 1000:.1f} ms of process CPU per image{'   <- the bare model' if mode == best else ''}"
            )
        print(
            f"indexer sync, first run    {first['images_per_second']:7.1f} images/s   {first['images_per_second'] / bare_rate:.0%} of the bare model"
        )
        print(
            f"CPU outside the model      {outside * 1000:7.1f} ms per image (process CPU {sync_cpu / count * 1000:.1f} ms minus the model's "
            f"{model_cpu * 1000:.1f}); per stage (worker threads' CPU; upsert: wall): "
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
