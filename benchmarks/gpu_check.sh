#!/usr/bin/env bash
# The device check: what one GPU machine does with catalogue-indexer, in under 5 minutes, from a clone.
#
#   benchmarks/gpu_check.sh [DAM]         # DAM: a folder of catalogue images (default ../shared/data/dam,
#                                         #      else .gpu-check/dam, a copy carried with the clone)
#
# Prints:
#   1. the bare CLIP ViT-B/32 (FashionCLIP's architecture, random weights: the hub is out of reach)
#      in images/s at each batch size, and the best;
#   2. indexer sync end to end on the DAM replicated to $IMAGES files (default 20,000): images/s
#      and its share of the bare model, and the stage breakdown;
#   3. the GPU tests (tests/test_gpu.py: GPU vectors against CPU vectors).
# Environment: IMAGES (20000), DEVICE (cuda), DTYPE (fp16), WORKERS (cores), PYTHON (python3).
# Where packages cannot be fetched (the lent machine), wheels carried in .whl/ are installed first
# (benchmarks/RESULTS.md "GPU check"). Writes only under $WORK (default /tmp/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
IMAGES=${IMAGES:-20000}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-fp16}
WORKERS=${WORKERS:-$(nproc)}
WORK=${WORK:-/tmp/gpu-check}
started=$(date +%s)

# -- packages: the machine's own, this project, and carried wheels for what is missing -------------
if ! "$PYTHON" -c "import qdrant_edge" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
fi
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch, transformers, qdrant_edge, onnxruntime, cv2, PIL, click; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# -- the catalogue, replicated (hard links: no copying) ------------------------------------------
DAM=${1:-}
if [ -z "$DAM" ]; then
    if [ -d ../shared/data/dam ]; then DAM=../shared/data/dam; else DAM=.gpu-check/dam; fi
fi
rm -rf "$WORK/dam" "$WORK/store" "$WORK/vit"
mkdir -p "$WORK/dam"
"$PYTHON" - "$DAM" "$WORK/dam" "$IMAGES" <<'EOF'
import os, sys
from pathlib import Path
source, target, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
for i in range(count):
    folder = target / f"copy{i // len(files):02d}"
    folder.mkdir(exist_ok=True)
    original = files[i % len(files)]
    try:
        os.link(original, folder / original.name)
    except OSError:
        (folder / original.name).write_bytes(original.read_bytes())
print(f"{count} images from {len(files)} in {source}")
EOF

# -- 1. the bare model ------------------------------------------------------------------------------
"$PYTHON" - "$WORK/vit" "$DEVICE" "$DTYPE" <<'EOF'
import sys, time
import numpy as np, torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
from indexer.encoders import load_encoder
folder, device, dtype = sys.argv[1:]
torch.manual_seed(0)
CLIPModel(CLIPConfig()).save_pretrained(folder)  # ViT-B/32 shapes, random weights
CLIPImageProcessor().save_pretrained(folder)
encoder = load_encoder(folder, device=device, runtime="torch", dtype=dtype)
inputs = np.random.default_rng(0).normal(size=(1024, 3, 224, 224)).astype(np.float32)
best = (0.0, 0)
for batch in (32, 64, 128, 256, 512, 1024):
    encoder.embed_batch(list(inputs[:batch]))  # warm-up at this shape
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t, done = time.perf_counter(), 0
    while time.perf_counter() - t < 3:
        encoder.embed_batch(list(inputs[:batch]))
        done += batch
    rate = done / (time.perf_counter() - t)
    best = max(best, (rate, batch))
    print(f"bare ViT-B/32 {dtype} batch {batch:5d}: {rate:9.0f} images/s")
print(f"BEST bare {best[0]:.0f} images/s at batch {best[1]}")
open(f"{folder}/best.txt", "w").write(f"{best[0]} {best[1]}\n")
EOF
read -r BARE BATCH < "$WORK/vit/best.txt" || true

# -- 2. indexer sync, end to end -------------------------------------------------------------------
"$PYTHON" -m catalogue_cli.indexer sync "$WORK/dam" --model "$WORK/vit" --device "$DEVICE" --dtype "$DTYPE" --runtime torch \
    --batch-size "$BATCH" --workers "$WORKERS" --qdrant-path "$WORK/store" --json -q > "$WORK/sync.json"
"$PYTHON" - "$WORK/sync.json" "$BARE" <<'EOF'
import json, sys
report, bare = json.load(open(sys.argv[1])), float(sys.argv[2])
rate = report["images_per_second"]
print(f"indexer sync: {report['encoded']} images at {rate:.0f} images/s = {rate / bare:.0%} of the bare model, "
      f"prepared by {report['prepared_by']}")
stages = report["stages"]
n = report["encoded"]
print("stages, per image: " + ", ".join(f"{k} {v / n * 1000:.2f} ms" for k, v in stages.items() if k in ("read", "decode", "colour", "preprocess"))
      + " (workers' CPU); " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items() if k in ("encode", "upsert", "encode_wall", "index")) + " (wall)")
EOF

# -- 3. the GPU tests -------------------------------------------------------------------------------
if "$PYTHON" -c "import pytest" 2>/dev/null; then
    "$PYTHON" -m pytest -q tests/test_gpu.py -p no:cacheprovider || echo "GPU tests failed"
fi
echo "gpu_check: $(( $(date +%s) - started )) s"
