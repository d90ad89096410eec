"""Encoders exported to ONNX and run by onnxruntime: the CPU search path without torch.

Importing torch and transformers is most of a `search image` process's time
before its first photo; onnxruntime imports and loads a model much faster,
and runs the small batches of a search faster on the CPU
(`benchmarks/onnx_runtime.py` measures both). Torch stays the runtime on
GPUs and the tool that makes the export.

An export is two files in a cache folder, named by the model's vector name,
the revision of this tool's preprocessing for it and a hash of its model id:

    efficientnet-lite0-r2-1a2b3c4d.onnx   the network: uint8 (N, H, W, 3) pixels in, normalised
                                          inside, fp32 features out, any batch size
    efficientnet-lite0-r2-1a2b3c4d.json   model_id, dim, revision, preprocessing recipe

Both are written under temporary names and renamed into place, graph first,
and the sidecar records the graph's size: an export is only found when its
sidecar is complete and its graph whole, so a killed export is never loaded
(the next load exports again). For a local checkpoint folder the sidecar
also records the sizes and times of the folder's files, so re-saving the
checkpoint makes a new export instead of serving stale weights; a hub id
names one export whatever snapshot the hub cache holds later.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from indexer.encoders import Encoder, l2_normalise
from indexer.encoders.pixels import recipe_from_dict, recipe_to_dict
from indexer.errors import ModelLoadError, first_line

#: Bumped when the graph's inputs/outputs or the sidecar change meaning: older exports are then ignored.
#: 2: the graph takes the recipe's uint8 pixels and normalises them itself (1 took normalised floats).
EXPORT_FORMAT = 2
_INPUT, _OUTPUT = "pixel_values", "features"
#: How far the exported graph's unit vectors may be from torch's before the export is refused.
_TOLERANCE = 1e-4


def export_path(folder: Path, model_id: str, revision: int) -> Path:
    """Where the export of `model_id` at `revision` lives in `folder`."""
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    tail = model_id.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in tail) or "model"
    return Path(folder) / f"{name}-r{revision}-{digest}.onnx"


def find_export(folder: Path, model_id: str, revision: int) -> Path | None:
    """The complete, current export of `model_id` at `revision` in `folder`, or None."""
    path = export_path(folder, model_id, revision)
    try:
        sidecar = _read_sidecar(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    current = (
        sidecar.get("format") == EXPORT_FORMAT
        and sidecar.get("model_id") == model_id
        and sidecar.get("revision") == revision
        and sidecar.get("source") == source_fingerprint(model_id)
        and _size(path) == sidecar.get("onnx_bytes")
    )
    return path if current else None


def source_fingerprint(model_id: str) -> str | None:
    """Sizes and modification times of a local checkpoint folder's files, hashed; None for other models."""
    folder = Path(model_id)
    if not folder.is_dir():
        return None
    entries = sorted(
        f"{entry.name}:{entry.stat().st_size}:{entry.stat().st_mtime_ns}"
        for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".")
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def export_onnx(encoder: Encoder, folder: Path) -> Path:
    """Export a torch encoder loaded on the CPU to `folder`; the path of its graph.

    The graph is checked against the torch network on a random batch before
    it is published. ModelLoadError when it cannot be exported.
    """
    import torch

    from indexer.encoders._torch import FromPixels

    network = getattr(encoder, "network", None)
    if network is None:
        raise ModelLoadError(f"cannot export {encoder.model_id}: it is not a torch encoder")
    if encoder.device != "cpu":
        raise ModelLoadError(f"cannot export {encoder.model_id} from {encoder.device}: load it with device 'cpu' (fp32)")
    try:
        recipe = encoder.recipe
    except ValueError as exc:
        raise ModelLoadError(f"cannot export {encoder.model_id}: its preprocessing is not supported: {first_line(exc)}") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = export_path(folder, encoder.model_id, encoder.revision)
    shape = recipe.pixels(_sample_image()).shape
    sample = np.random.default_rng(0).integers(0, 256, size=(3, *shape), dtype=np.uint8)
    with torch.inference_mode():
        expected = network(torch.from_numpy(recipe.normalise(sample))).numpy()
    graph = FromPixels(network, recipe)

    partial = folder / f".{path.name}.{os.getpid()}.partial"
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                graph,
                (torch.from_numpy(sample),),
                dynamo=True,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                verbose=False,
            )
            program.save(partial, external_data=False)
        got = _session(partial, threads=None).run([_OUTPUT], {_INPUT: sample})[0]
        error = float(np.abs(l2_normalise(got) - l2_normalise(expected)).max())
        if not error <= _TOLERANCE:
            raise ModelLoadError(f"cannot export {encoder.model_id}: the ONNX graph differs from torch by {error:.2g}")
        os.replace(partial, path)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; each means "no export"
        raise ModelLoadError(f"cannot export {encoder.model_id} to ONNX: {first_line(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)

    sidecar = {
        "format": EXPORT_FORMAT,
        "model_id": encoder.model_id,
        "dim": encoder.dim,
        "revision": encoder.revision,
        "source": source_fingerprint(encoder.model_id),
        "onnx_bytes": _size(path),
        "recipe": recipe_to_dict(recipe),
        "exported_with": {"torch": torch.__version__},
    }
    _write_atomically(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
    return path


class OnnxEncoder(Encoder):
    """An exported encoder on onnxruntime's CPU provider: same model_id, dim and revision as the torch one."""

    device = "cpu"

    def __init__(self, path: Path, *, threads: int | None = None):
        path = Path(path)
        try:
            sidecar = _read_sidecar(path)
            self.model_id = str(sidecar["model_id"])
            self.dim = int(sidecar["dim"])
            self.revision = int(sidecar["revision"])
            self.recipe = recipe_from_dict(sidecar["recipe"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot read the ONNX export {path}: {first_line(exc)}; delete it to export again") from None
        self.path = path
        self._session = _session(path, threads=threads)
        self._single = None  # the single-threaded session of `lanes`

    def lanes(self):
        """One single-threaded forward per core, each on its own batch: on a CPU, data parallelism
        scales better than splitting one forward over threads, and leaves no thread spinning idle
        while the others prepare images. The lanes share one single-threaded session (a session
        runs concurrent calls; with one thread each runs on its caller's thread), made on first use."""
        cores = cpu_count()
        if cores == 1:
            return [self.embed_batch]
        if self._single is None:
            self._single = copy.copy(self)
            self._single._session = _session(self.path, threads=1)
        return [self._single.embed_batch] * cores

    def preprocess(self, image) -> np.ndarray:
        """uint8 (H, W, 3): the graph normalises a whole batch at once."""
        return self.recipe.pixels(image)

    def input_step(self):
        return self.recipe.pixels

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(batch, dtype=np.uint8)})[0]


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, which containers narrow), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _session(path: Path, *, threads: int | None):
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError("the ONNX runtime needs onnxruntime: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: stderr belongs to our progress and warnings
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's exception types have no stable import path
        raise ModelLoadError(f"cannot load the ONNX export {path}: {first_line(exc)}; delete it to export again") from None


def _read_sidecar(path: Path) -> dict:
    data = json.loads(path.with_suffix(".json").read_text())
    if not isinstance(data, dict):
        raise TypeError("the sidecar is not a JSON object")
    return data


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _sample_image():
    from PIL import Image

    return Image.new("RGB", (64, 48), "white")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress to stdout (ours is for results), logs and warns about things
    that do not concern a CPU graph (torchvision ops, deprecations): keep all of it out."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
