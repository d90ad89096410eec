"""How far the palette's dominant colour moves when the colour analysis changes, against how far
the previous analysis moved by chance.

    python benchmarks/colour_drift.py ../shared/data/dam [--limit N] [--old-rev 12c6e46]

The previous analysis (`indexer/colour.py` at --old-rev: a 96 px bilinear thumbnail, k-means++ on
2,000 sampled pixels) is loaded from git history. Prints, as the share of images whose dominant
colour moves by more than 2 / 5 / 10 delta E:
  current vs previous              what the change moves;
  previous, seed 0 vs seed 1       the previous analysis's own instability (another sample and start);
  previous, bilinear vs box        the same with the thumbnail box-averaged instead of bilinear;
  current, seed 0 vs seed 1        the current analysis's own instability;
and the CPU time per image of each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def previous_module(rev: str, *, box: bool = False) -> types.ModuleType:
    """indexer/colour.py as it was at `rev`; with `box`, its thumbnail box-averaged instead of bilinear."""
    source = subprocess.run(
        ["git", "show", f"{rev}:indexer/colour.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    if box:
        source = source.replace(
            "small.thumbnail((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BILINEAR)",
            "small.thumbnail((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX)",
        )
    name = f"colour_at_{rev}{'_box' if box else ''}"
    module = sys.modules[name] = types.ModuleType(name)
    exec(compile(source, f"{rev}:indexer/colour.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dam", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--old-rev", default="12c6e46", help="git revision of the previous analysis")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from indexer import colour
    from indexer.images import load_rgb
    from indexer.prepare import DECODE_SHORT_SIDE
    from indexer.scan import scan

    previous = previous_module(args.old_rev)
    sources = scan(args.dam).images[: args.limit]
    images = [load_rgb(s.path, draft=DECODE_SHORT_SIDE) for s in sources]

    def dominants(extract, **options) -> tuple[np.ndarray, float]:
        started = time.process_time()
        out = np.array([extract(image, **options).dominant for image in images])
        return out, (time.process_time() - started) / len(images) * 1000

    colour.extract_palette(images[0])  # builds the bin table once
    current, current_ms = dominants(colour.extract_palette)
    current_1, _ = dominants(colour.extract_palette, seed=1)
    old, old_ms = dominants(previous.extract_palette)
    old_1, _ = dominants(previous.extract_palette, seed=1)
    old_box, _ = dominants(previous_module(args.old_rev, box=True).extract_palette)

    print(f"images: {len(images)}; CPU per image: current {current_ms:.2f} ms, previous {old_ms:.2f} ms")
    print("share of images whose dominant colour moves by more than   2 dE    5 dE   10 dE   median dE")
    for label, a, b in (
        ("current vs previous (seed 0)", current, old),
        ("previous, seed 0 vs seed 1", old, old_1),
        ("previous, bilinear vs box thumbnail", old, old_box),
        ("current, seed 0 vs seed 1", current, current_1),
    ):
        moved = np.linalg.norm(a - b, axis=1)
        print(
            f"  {label:55s} {np.mean(moved > 2):6.1%} {np.mean(moved > 5):6.1%} {np.mean(moved > 10):6.1%}   {np.median(moved):6.2f}"
        )


if __name__ == "__main__":
    main()
