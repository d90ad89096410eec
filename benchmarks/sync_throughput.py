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
  sync        the real first sync into a fresh embedded store (--repeat times, medians): images/s
              and its share of the bare model;
  outside     CPU per image outside the model: the sync's CPU time (its process and the preparing
              processes) minus the model's own, read two ways: the bare runs' CPU per image, and
              (ONNX) the forward threads' CPU in the sync itself, which the shared cores make
              higher; then per stage (the workers' CPU time);
  prepare     the preparation alone, no model, in N threads and in N processes: images/s it
              could feed a GPU with, and whether it scales with cores (the GIL);
  re-sync     the same sync again with nothing changed: in the library and as a whole process.
"""

from __future__ import annotations

import argparse
import resource
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


def _cpu_with_children() -> float:
    """This process's CPU seconds plus those of its ended children (the sync's preparing processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def best_bare(encoders, inputs: list[list], images: int) -> dict[str, tuple[float, float]]:
    return {mode: bare(encoders, inputs, images, lanes=mode == "lanes") for mode in ("one forward", "lanes")}


def prepare_alone(scanned, encoders, workers: int) -> dict:
    """Images/s of the preparation alone (read, decode, palette, model inputs; no model), in
    `workers` threads and in `workers` processes: whether it scales with cores, as a GPU needs."""
    from indexer.prepare import Job, Preparer, input_steps

    steps, _ = input_steps(encoders)
    jobs = [Job(s.path, s.relative) for s in scanned.images]
    rates = {}
    for processes in (False, True):
        with Preparer(steps, 3, workers=workers, processes=processes) as preparer:
            list(preparer.map(jobs[: 4 * workers], window=64))  # start-up and warm-up
            t = time.perf_counter()
            list(preparer.map(jobs, window=64))
            rates["processes" if processes else "threads"] = len(jobs) / (time.perf_counter() - t)
    return {"workers": workers, "rates": rates}


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
    parser.add_argument(
        "--prepare",
        default="auto",
        choices=["auto", "processes", "threads"],
        help="where images are prepared (sync's default: auto)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="first syncs run, each into a fresh store (medians reported)")
    parser.add_argument("--model-threads", type=int, default=None, help="threads of one ONNX forward (default: every core)")
    args = parser.parse_args()

    from indexer.encoders import default_cache_dir, load_encoder, parse_models
    from indexer.encoders.exported import cpu_count
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
        runtime_name = type(encoders[0]).__name__

        loader = {e.model_id: e for e in encoders}
        options = {"workers": args.workers} if args.workers else {}
        if args.prepare != "auto":
            options["processes"] = args.prepare == "processes"
        runs = []
        for run in range(args.repeat):
            store = work / f"qdrant-{run}"
            handle = open_store(path=store, create=True)
            cpu = _cpu_with_children()
            report = sync(
                dam, scanned, handle.collection("catalogue"), model=args.model, encoder_loader=lambda m, **_: loader[m], **options
            )
            runs.append((report.to_dict(), _cpu_with_children() - cpu))  # the preparing processes have ended: their CPU counts
            handle.close()
        after = best_bare(encoders, inputs, count)
        handle = open_store(path=store)
        t = time.perf_counter()
        again = sync(dam, scan(dam), handle.collection("catalogue"))
        resync_library = time.perf_counter() - t
        handle.close()
        assert again.unchanged == count and again.encoded == 0

        process_times = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "catalogue_cli.indexer", "sync", str(dam), "--qdrant-path", str(store), "-q"],
                check=True,
                capture_output=True,
            )
            process_times.append(time.perf_counter() - t)
        preparing = prepare_alone(scanned, encoders, args.workers or cpu_count())

        rates = {mode: ((before[mode][0] + after[mode][0]) / 2, (before[mode][1] + after[mode][1]) / 2) for mode in before}
        best = max(rates, key=lambda mode: rates[mode][0])
        bare_rate, model_cpu = rates[best]
        median = statistics.median
        sync_rate = median(r["images_per_second"] for r, _ in runs)
        sync_cpu = median(cpu for _, cpu in runs) / count
        forwards_cpu = median(r["stages"]["encode_cpu"] for r, _ in runs) / count
        stages = {
            k: median(r["stages"][k] for r, _ in runs) / count for k in ("read", "decode", "colour", "preprocess", "upsert")
        }
        print(
            f"images: {count}  model: {args.model}  device: {encoders[0].device}  runtime: {type(encoders[0]).__name__}  "
            f"prepared in: {args.prepare}  syncs: {args.repeat} (medians)"
        )
        for mode, (rate, cpu_per_image) in rates.items():
            print(
                f"bare model, {mode:14s} {rate:7.1f} images/s ({before[mode][0]:.1f} before the syncs, {after[mode][0]:.1f} "
                f"after); {cpu_per_image * 1000:.1f} ms of process CPU per image{'   <- the bare model' if mode == best else ''}"
            )
        print(f"indexer sync, first run    {sync_rate:7.1f} images/s   {sync_rate / bare_rate:.0%} of the bare model")
        print(
            f"CPU outside the model      {(sync_cpu - model_cpu) * 1000:7.1f} ms per image: the sync's CPU {sync_cpu * 1000:.1f} ms "
            f"minus the bare model's {model_cpu * 1000:.1f}"
        )
        if runtime_name == "OnnxEncoder":  # its lanes run on the forward threads, whose CPU the sync measures
            print(
                f"                           {(sync_cpu - forwards_cpu) * 1000:7.1f} ms per image: minus the forwards' own "
                f"{forwards_cpu * 1000:.1f} ms in the sync (slower than bare: the cores are shared)"
            )
        print("  per stage (workers' CPU; upsert: wall)  " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in stages.items()) + " ms")
        print(
            f"prepare alone, {preparing['workers']} workers    "
            + ", ".join(f"{mode} {rate:.0f} images/s" for mode, rate in preparing["rates"].items())
            + " (no model: how fast preparation could feed a GPU, per core count)"
        )
        print(
            f"re-sync, nothing changed   {resync_library * 1000:7.0f} ms in the library; whole process: {statistics.median(process_times):.2f} s (median of 3)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
