"""ONNX runtime vs torch on the CPU: import, model load, forward per batch size, and the one-off export.

    python benchmarks/onnx_runtime.py                      # lite0, lite2, CLIP ViT-B/32 (random weights)
    python benchmarks/onnx_runtime.py --models efficientnet-lite0 --repeat 10

Each runtime is measured in a fresh interpreter of its own (a search
process's real start: imports, then the model, then forwards), one after
the other, so neither runtime's thread pool competes with the other's;
`--rounds` alternates them and every figure is the best over rounds and
repeats: on a shared machine other processes only ever add time, and the
median of a contended run says more about the neighbours than the model. The
CLIP model is FashionCLIP's architecture (`CLIPConfig()` defaults: ViT-B/32)
with random weights saved to a local folder, since the hub is out of reach
here; speed does not depend on the weights. Prints the medians and each
ONNX figure as a ratio of torch's in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP_FOLDER = Path(tempfile.gettempdir()) / "clip-vit-b32-random"
BATCHES = (1, 4, 32)

# Runs in a fresh interpreter: imports, load, forwards; prints one JSON line.
CHILD = """
import json, sys, time
start = time.perf_counter()
runtime, model, cache, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np
from indexer.encoders import encoder_class, load_encoder
if runtime == "onnx":
    import onnxruntime
    import indexer.encoders.exported
else:
    import torch
    encoder_class(model)
    if model.startswith("efficientnet"):
        import efficientnet_lite_pytorch
    else:
        import transformers
    import indexer.encoders._torch
imported = time.perf_counter()
encoder = load_encoder(model, device="cpu", cache_dir=cache if runtime == "onnx" else None, runtime=runtime)
loaded = time.perf_counter()
from PIL import Image
rng = np.random.default_rng(0)
# Each runtime's own model inputs (torch: normalised floats; ONNX: uint8 pixels, normalised in the graph).
pictures = [encoder.preprocess(Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))) for _ in range(32)]
forward = {}
for batch in (1, 4, 32):
    inputs = pictures[:batch]
    encoder.embed_batch(inputs)  # warm-up: first-call allocations
    times = []
    for _ in range(repeat if batch < 32 else max(2, repeat // 4)):
        t = time.perf_counter()
        encoder.embed_batch(inputs)
        times.append(time.perf_counter() - t)
    forward[batch] = min(times) * 1000
print(json.dumps({"runtime": type(encoder).__name__, "import_s": imported - start, "load_s": loaded - imported,
                  "forward_ms": forward, "torch_imported": "torch" in sys.modules}))
"""


def save_random_clip(folder: Path) -> str:
    """FashionCLIP's architecture (ViT-B/32, 512-d) with random weights, saved like a hub checkpoint."""
    if not (folder / "config.json").exists():
        import torch
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        torch.manual_seed(0)
        CLIPModel(CLIPConfig()).save_pretrained(folder)
        CLIPImageProcessor().save_pretrained(folder)
    return str(folder)


def measure(runtime: str, model: str, cache: Path, repeat: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, runtime, model, str(cache), str(repeat)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """The fastest of each figure over several runs."""
    return {
        "import_s": min(r["import_s"] for r in runs),
        "load_s": min(r["load_s"] for r in runs),
        "forward_ms": {b: min(r["forward_ms"][b] for r in runs) for b in runs[0]["forward_ms"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "efficientnet-lite2", "clip-vit-b32"])
    parser.add_argument("--repeat", type=int, default=8, help="forwards timed per batch size (a quarter of it at 32)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per runtime, alternated")
    args = parser.parse_args()

    from indexer.encoders import load_encoder
    from indexer.encoders.exported import export_onnx

    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Path(cache_dir)
        for name in args.models:
            model = save_random_clip(CLIP_FOLDER) if name == "clip-vit-b32" else name
            t = time.perf_counter()
            encoder = load_encoder(model, device="cpu", runtime="torch")
            torch_load = time.perf_counter() - t
            t = time.perf_counter()
            path = export_onnx(encoder, cache)
            export = time.perf_counter() - t
            del encoder
            runs: dict[str, list[dict]] = {"onnx": [], "torch": []}
            for _ in range(args.rounds):
                for runtime, results in runs.items():
                    results.append(measure(runtime, model, cache, args.repeat))
            assert all(r["runtime"] == "OnnxEncoder" and not r["torch_imported"] for r in runs["onnx"]), runs["onnx"]
            onnx, torch = best(runs["onnx"]), best(runs["torch"])

            print(
                f"\n{name}: export {export:.1f} s (after a {torch_load:.1f} s torch load in a warm process), "
                f"{path.stat().st_size / 1e6:.0f} MB"
            )
            print(f"  {'best of ' + str(args.rounds) + ' runs':14s} {'onnx':>9s} {'torch':>9s} {'onnx/torch':>10s}")
            rows = [("import (s)", onnx["import_s"], torch["import_s"]), ("load (s)", onnx["load_s"], torch["load_s"])]
            rows += [(f"batch {b} (ms)", onnx["forward_ms"][str(b)], torch["forward_ms"][str(b)]) for b in BATCHES]
            rows += [(f"per image @{b}", onnx["forward_ms"][str(b)] / b, torch["forward_ms"][str(b)] / b) for b in BATCHES[1:]]
            for label, ours, theirs in rows:
                print(f"  {label:14s} {ours:9.3f} {theirs:9.3f} {ours / theirs:10.2f}")


if __name__ == "__main__":
    main()
