"""Memory of worst-case photos through `search serve`'s own search, against a normal photo in the same run.

    python benchmarks/decode_memory.py --qdrant-path STORE [--photo PHOTO] [--workers 4 --queue 16]

Each scenario runs in a fresh process that loads the service (models, store,
pool of `--workers` with its queue, warmed up) and searches a normal photo
once; then its peak RSS is reset and it searches:
  one     one photo
  queue   workers + queue copies of it at once, through the service's pool
The worst cases are made here, each just under the 100-Mpixel limit:
  scan    a 1-bit PNG line drawing of 9999x9999 (a few KB)
  jpeg    an RGB JPEG of 9999x9999
  png     an RGB PNG of 9999x9999
Printed per scenario: RSS when ready, peak RSS during the searches, RSS a
second after they end, in MB; the peak's growth over ready, and the peak
against the normal photo's peak in the same mode. The code measured is whatever `indexer`
and `search` import (PYTHONPATH), so the same script measures any commit.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = 9999
KINDS = ("normal", "scan", "jpeg", "png")


def rss_mb(key: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs Linux's /proc/self/status")


def worst_cases(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image, ImageDraw

    scan = Image.new("1", (SIDE, SIDE), 1)
    ImageDraw.Draw(scan).ellipse((2000, 2500, 8000, 7500), outline=0, width=40)
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    rgb = np.empty((SIDE, SIDE, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = ramp[None, :], ramp[:, None], 128
    photo = Image.fromarray(rgb)
    ImageDraw.Draw(photo).ellipse((2000, 2500, 8000, 7500), fill=(200, 30, 30))
    paths = {"scan": folder / "scan.png", "jpeg": folder / "photo.jpg", "png": folder / "photo.png"}
    scan.save(paths["scan"])
    photo.save(paths["jpeg"], quality=90)
    photo.save(paths["png"])
    return paths


def child(args) -> None:
    """One scenario in this process; prints one JSON line."""
    from concurrent.futures import wait

    from catalogue_cli.options import model_loading
    from search.options import SearchOptions
    from search.serve.service import ServeConfig, Service

    service = Service(
        ServeConfig(
            qdrant_path=str(args.qdrant_path),
            model_loading=model_loading("cpu", "auto"),
            workers=args.workers,
            queue=args.queue,
        )
    )
    service.load()
    if service.failure is not None:
        raise SystemExit(f"cannot load: {service.failure}")
    normal = args.photo.read_bytes()
    data = Path(args.child_photo).read_bytes()
    copies = 1 if args.child_mode == "one" else args.workers + args.queue
    try:
        service.search_upload(normal, "normal", SearchOptions(), None)
        gc.collect()
        ready = rss_mb()
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        futures = [service.submit(service.search_upload, data, f"{i}", SearchOptions(), None) for i in range(copies)]
        done, _ = wait(futures)
        errors = [str(f.exception()) for f in done if f.exception() is not None]
        peak = rss_mb("VmHWM")
        gc.collect()
        time.sleep(1)
        print(json.dumps({"ready": ready, "peak": peak, "after": rss_mb(), "errors": errors[:1], "failed": len(errors)}))
    finally:
        service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qdrant-path", type=Path, required=True, help="a synced embedded store (copied first)")
    parser.add_argument("--photo", type=Path, default=Path("../shared/data/store-photos-dev/IMG_6883.jpg"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--modes", default="one,queue")
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    parser.add_argument("--child-photo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mode:
        return child(args)

    work = Path(tempfile.mkdtemp(prefix="decode-memory-"))
    try:
        store = work / "store"
        shutil.copytree(args.qdrant_path, store)
        photos = {"normal": args.photo, **worst_cases(work)}
        print(f"workers {args.workers}, queue {args.queue}; photos: " + ", ".join(f"{k} {_size(p)}" for k, p in photos.items()))
        print(f"{'scenario':14} {'ready MB':>9} {'peak MB':>9} {'after MB':>9} {'growth MB':>10} {'peak x normal':>14}  errors")
        for mode in args.modes.split(","):
            normal_peak = None
            for kind in args.kinds.split(","):
                command = [sys.executable, __file__, "--qdrant-path", str(store), "--photo", str(args.photo)]
                command += ["--workers", str(args.workers), "--queue", str(args.queue)]
                command += ["--child-mode", mode, "--child-photo", str(photos[kind])]
                found = subprocess.run(command, capture_output=True, text=True)
                if found.returncode != 0:
                    print(f"{kind + ' ' + mode:14} failed (exit {found.returncode}): {found.stderr.strip()[-300:]}")
                    continue
                row = json.loads(found.stdout.strip().splitlines()[-1])
                normal_peak = row["peak"] if kind == "normal" else normal_peak
                ratio = f"x{row['peak'] / normal_peak:.2f}" if normal_peak else "-"
                errors = f"{row['failed']} ({row['errors'][0][:80]})" if row["failed"] else "0"
                growth = row["peak"] - row["ready"]
                print(
                    f"{kind + ' ' + mode:14} {row['ready']:9.0f} {row['peak']:9.0f} {row['after']:9.0f} {growth:10.0f} {ratio:>14}  {errors}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _size(path: Path) -> str:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the worst cases are under the service's own limit, above Pillow's warning
    with Image.open(path) as image:
        return f"{image.width}x{image.height} {image.mode} {image.format} ({_kb(path.stat().st_size)})"


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KB"


if __name__ == "__main__":
    main()
