"""What every torch backbone shares: device placement, half precision on GPUs, inference mode.

Importing this module imports torch; the encoder modules import it only when
a model is loaded, so the ONNX path can read their classes without torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class Features(torch.nn.Module):
    """A backbone's pixels -> features as one module: what `run` calls and what an ONNX export traces,
    so the exported graph is the network the torch encoder runs, not a copy of its code."""

    def __init__(self, model: torch.nn.Module, features: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self._features = features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.model, pixels)


class FromPixels(torch.nn.Module):
    """What an ONNX export traces: a recipe's normalisation of uint8 (N, H, W, C) pixels, then the network,
    so the CPU runs one vectorised normalisation per batch inside the graph instead of one per image."""

    def __init__(self, network: torch.nn.Module, recipe):
        super().__init__()
        self.network = network
        self.recipe = recipe

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.recipe.normalise_torch(pixels))


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def inference_dtype(device: str, dtype: str = "auto") -> torch.dtype:
    """`auto`: fp16 on accelerators (faster, the same ranking), fp32 on CPU; else as asked."""
    if dtype == "auto":
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    return _DTYPES[dtype]


def prepare(module: torch.nn.Module, device: str, dtype: str = "auto") -> torch.nn.Module:
    module = module.eval().to(device=device, dtype=inference_dtype(device, dtype))
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def run(forward: Callable[[torch.Tensor], torch.Tensor], batch: np.ndarray, device: str, dtype: str = "auto") -> np.ndarray:
    """Apply `forward` to a numpy batch on `device`; float32 numpy back.

    On CUDA the batch goes through pinned memory with a non-blocking copy and is cast on the GPU:
    the CPU only hands over bytes, it converts nothing.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    if device.startswith("cuda"):
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    tensor = tensor.to(device=device, dtype=inference_dtype(device, dtype))
    if tensor.ndim == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        output = forward(tensor)
    return output.float().cpu().numpy()
