"""The ONNX runtime: exported encoders give torch's vectors, torch-free processes, safe exports.

Real components only: the tiny random CLIP checkpoint and the real
EfficientNet-Lite0 weights, exported with torch's exporter and run by
onnxruntime, on real catalogue images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from indexer.encoders import load_encoder
from indexer.encoders.exported import OnnxEncoder, export_path, find_export
from indexer.errors import ModelLoadError
from indexer.images import load_rgb

DAM = sorted((DATA / "dam").glob("*.jpeg"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def lite0_pair(cache):
    """lite0 on torch, and the ONNX encoder `load_encoder` makes of it on first use."""
    torch_encoder = load_encoder("efficientnet-lite0", device="cpu", runtime="torch")
    return torch_encoder, load_encoder("efficientnet-lite0", device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def clip_pair(cache, tiny_clip):
    torch_encoder = load_encoder(tiny_clip, device="cpu", runtime="torch")
    return torch_encoder, load_encoder(tiny_clip, device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [load_rgb(path) for path in DAM]


@pytest.mark.parametrize("pair", [pytest.param("lite0_pair", marks=pytest.mark.slow), "clip_pair"])
def test_exported_encoder_gives_torch_vectors(pair, images, request):
    torch_encoder, onnx_encoder = request.getfixturevalue(pair)
    assert isinstance(onnx_encoder, OnnxEncoder) and not isinstance(torch_encoder, OnnxEncoder)
    # What the collection's model check compares is unchanged.
    assert (onnx_encoder.model_id, onnx_encoder.dim, onnx_encoder.revision) == (
        torch_encoder.model_id,
        torch_encoder.dim,
        torch_encoder.revision,
    )
    onnx_encoder.batch_size = 5  # batches of 5, 5 and 2: the graph takes any batch size
    ours, reference = onnx_encoder.embed(images), torch_encoder.embed(images)
    assert ours.shape == (len(DAM), torch_encoder.dim) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert np.abs(ours - reference).max() <= 1e-4


@pytest.mark.slow
def test_lanes_run_at_once_and_give_the_encoders_vectors(lite0_pair, images):
    """A sync runs one single-threaded forward per core at once (`OnnxEncoder.lanes`): same vectors."""
    from concurrent.futures import ThreadPoolExecutor

    from indexer.encoders.exported import cpu_count

    _, onnx_encoder = lite0_pair
    lanes = onnx_encoder.lanes()
    assert len(lanes) == cpu_count()
    inputs = [onnx_encoder.preprocess(image) for image in images]
    expected = onnx_encoder.embed_batch(inputs)
    with ThreadPoolExecutor(len(lanes) + 1) as pool:
        results = list(pool.map(lambda lane: lane(inputs), [*lanes, lanes[0]]))
    for vectors in results:
        assert np.abs(vectors - expected).max() <= 1e-5


def _variants() -> dict[str, Image.Image]:
    """Real photos in the shapes that exercise the resize and crop arithmetic."""
    portrait = load_rgb(DATA / "dam" / "M9206UMOSM941.jpeg")
    landscape = portrait.rotate(90, expand=True).crop((0, 0, portrait.height, portrait.width * 2 // 3))
    cutout = portrait.convert("RGBA")
    cutout.putalpha(Image.new("L", portrait.size, 0).resize(portrait.size))
    cutout.paste((0, 0, 0, 255), (10, 10, 60, 60))
    return {
        "portrait": portrait,
        "landscape": landscape,
        "odd": portrait.resize((333, 517)),
        "tiny 10x300": portrait.resize((10, 300)),
        "tiny 300x10": portrait.resize((300, 10)),
        "large": portrait.resize((3001, 2203)),
        "grey": portrait.convert("L"),
        "transparent": cutout,
    }


@pytest.mark.parametrize(
    "settings",
    [
        {},  # CLIP ViT-B/32 and FashionCLIP: shortest edge 224, crop 224
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},  # the tiny test checkpoint
        {"size": {"shortest_edge": 40}, "crop_size": {"height": 48, "width": 36}},  # a crop larger than the image pads
        {"size": {"height": 50, "width": 70}, "crop_size": {"height": 45, "width": 60}},
    ],
)
def test_clip_pixels_equal_the_transformers_processor(settings):
    """Same Pillow calls and the same float steps as `CLIPImageProcessorPil`, so the pixels are
    equal; 1e-6 leaves room for float rounding only, far below one grey level after
    normalisation (1 / 255 / 0.27 = 0.015), which any resize or off-by-one crop would exceed."""
    from indexer.encoders.clip import _image_processor_class
    from indexer.encoders.pixels import ClipPixels

    processor = _image_processor_class()(**settings)
    recipe = ClipPixels.from_processor(processor)
    for name, image in _variants().items():
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        ours = recipe(image)
        assert ours.shape == expected.shape and ours.dtype == np.float32, name
        assert np.abs(ours - expected).max() <= 1e-6, name
        _assert_graph_normalises_alike(recipe, recipe.pixels(image), name)


def test_centre_square_normalises_alike_per_image_and_in_the_graph():
    from indexer.encoders.pixels import CentreSquare

    recipe = CentreSquare(224)
    for name, image in _variants().items():
        if image.mode == "RGB":
            _assert_graph_normalises_alike(recipe, recipe.pixels(image), name)


def _assert_graph_normalises_alike(recipe, pixels: np.ndarray, name: str) -> None:
    """An export's graph takes uint8 pixels and normalises them with torch ops: the same floats as numpy's."""
    import torch

    assert pixels.dtype == np.uint8 and pixels.ndim == 3, name
    batch = np.stack([pixels, pixels[::-1]])
    in_graph = recipe.normalise_torch(torch.from_numpy(batch)).numpy()
    assert in_graph.dtype == np.float32 and np.abs(in_graph - recipe.normalise(batch)).max() <= 1e-6, name


def _run_isolated(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter from the repository root; its last stdout line as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pair", [pytest.param("lite0_pair", marks=pytest.mark.slow), "clip_pair"])
def test_an_exported_encoder_runs_without_torch_or_transformers(pair, cache, request):
    torch_encoder, _ = request.getfixturevalue(pair)
    code = f"""
import json, sys
from indexer.encoders import load_encoder
from indexer.images import load_rgb
encoder = load_encoder({torch_encoder.model_id!r}, cache_dir={str(cache)!r})  # device auto
vector = encoder.embed([load_rgb({str(DAM[0])!r})])[0]
print(json.dumps({{"runtime": type(encoder).__name__, "vector": vector.tolist(),
                  "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)}}))
"""
    # The machine's GPUs, if any, hidden: `auto` then means the CPU, decided without torch.
    report = _run_isolated(code, CUDA_VISIBLE_DEVICES="")
    assert report["runtime"] == "OnnxEncoder"
    assert report["loaded"] == []
    assert np.abs(np.array(report["vector"]) - torch_encoder.embed([load_rgb(DAM[0])])[0]).max() <= 1e-4


def test_a_half_written_export_is_never_loaded(clip_pair, cache, tiny_clip, tmp_path):
    torch_encoder, onnx_encoder = clip_pair
    graph = export_path(cache, torch_encoder.model_id, torch_encoder.revision)
    assert onnx_encoder.path == graph and find_export(cache, torch_encoder.model_id, torch_encoder.revision) == graph

    folder = tmp_path / "cache"
    folder.mkdir()
    # An export killed while writing leaves only its temporary file.
    shutil.copy(graph, folder / f".{graph.name}.4242.partial")
    assert find_export(folder, torch_encoder.model_id, torch_encoder.revision) is None
    # A graph without its sidecar (killed between the two renames).
    shutil.copy(graph, folder / graph.name)
    assert find_export(folder, torch_encoder.model_id, torch_encoder.revision) is None
    # A sidecar whose graph was cut short (a copy of the cache interrupted, a full disk).
    shutil.copy(graph.with_suffix(".json"), folder / graph.with_suffix(".json").name)
    (folder / graph.name).write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    assert find_export(folder, torch_encoder.model_id, torch_encoder.revision) is None

    # Loading exports afresh over the broken files, and the result is whole.
    encoder = load_encoder(tiny_clip, device="cpu", cache_dir=folder)
    assert isinstance(encoder, OnnxEncoder)
    assert find_export(folder, torch_encoder.model_id, torch_encoder.revision) == folder / graph.name
    assert (folder / graph.name).read_bytes() == graph.read_bytes()


def test_a_resaved_checkpoint_is_not_served_from_a_stale_export(tiny_clip, tmp_path):
    checkpoint = Path(shutil.copytree(tiny_clip, tmp_path / "checkpoint"))
    cache = tmp_path / "cache"
    encoder = load_encoder(str(checkpoint), device="cpu", cache_dir=cache, runtime="onnx")
    assert find_export(cache, encoder.model_id, encoder.revision) == encoder.path
    weights = checkpoint / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert find_export(cache, encoder.model_id, encoder.revision) is None


def test_a_failed_export_warns_once_and_falls_back_to_torch(tiny_clip, tmp_path, capsys):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    for _ in range(2):
        encoder = load_encoder(tiny_clip, device="cpu", cache_dir=not_a_folder)
        assert not isinstance(encoder, OnnxEncoder) and encoder.dim == 16
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("warning: cannot write the ONNX export") == 1
    with pytest.raises(ModelLoadError, match="cannot write the ONNX export"):
        load_encoder(tiny_clip, device="cpu", cache_dir=not_a_folder, runtime="onnx")


def test_runtime_choices_are_checked(tiny_clip, tmp_path):
    with pytest.raises(ModelLoadError, match="unknown runtime"):
        load_encoder(tiny_clip, runtime="tensorrt")
    with pytest.raises(ModelLoadError, match="CPU only"):
        load_encoder(tiny_clip, device="cuda", cache_dir=tmp_path, runtime="onnx")
    with pytest.raises(ModelLoadError, match="cache folder"):
        load_encoder(tiny_clip, device="cpu", runtime="onnx")
    # No cache folder: torch, as before the ONNX runtime existed.
    assert not isinstance(load_encoder(tiny_clip, device="cpu", batch_size=3), OnnxEncoder)


def test_search_image_process_imports_no_torch_transformers_or_scipy(synced, dam, store):
    """What a `search image` process pays at start-up: the exported models, not torch (1.4 s) or scipy's clustering."""
    script = (
        "import sys\n"
        "from catalogue_cli.search import main\n"
        f"sys.argv = ['search', 'image', {str(dam / 'generated' / 'RED-BAG.png')!r}, '--qdrant-path', {store!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'scipy.cluster', 'scipy.ndimage', 'sklearn', 'qdrant_client') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"
