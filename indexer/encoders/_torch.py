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


def inference_dtype(device: str) -> torch.dtype:
    """fp16 on accelerators (twice the throughput, same ranking), fp32 on CPU."""
    return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32


def prepare(module: torch.nn.Module, device: str) -> torch.nn.Module:
    module = module.eval().to(device=device, dtype=inference_dtype(device))
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def run(forward: Callable[[torch.Tensor], torch.Tensor], batch: np.ndarray, device: str) -> np.ndarray:
    """Apply `forward` to a numpy batch on `device`; float32 numpy back."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(device=device, dtype=inference_dtype(device))
    if tensor.ndim == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        output = forward(tensor)
    return output.float().cpu().numpy()
