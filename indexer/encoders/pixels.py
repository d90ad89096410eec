"""Model inputs from PIL images with Pillow and numpy only.

The ONNX runtime path must not import torch or transformers (together most
of a process's start-up), so each backbone's preprocessing is written here as a small
recipe: plain data that an export records in its sidecar, and a call that
turns one RGB image into the model's (C, H, W) float32 input. The call is two
steps, kept apart so the costly one runs per image and the cheap one per
batch: `pixels` (resize and crop: uint8 (H, W, 3), in a sync's workers) and
`normalise` (a stacked uint8 batch to float32 (N, C, H, W)); an exported
graph takes the uint8 batch and normalises inside (`exported.py`).

- `CentreSquare`: EfficientNet-Lite's transform; the torch encoder uses it too.
- `ClipPixels`: transformers' `CLIPImageProcessorPil` step for step (same
  Pillow resize, same rounding of the resized size and of the crop offsets,
  same float64 rescale then float32 normalisation), so the pixels are equal,
  not just close; tests compare it with the processor on real images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CentreSquare:
    """Bicubic resize of the centred square to `size`, then (pixel - mean) / std."""

    size: int
    mean: float = 127.0
    std: float = 128.0

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalise(self.pixels(image)[None])[0]

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The resized centre square, uint8 (size, size, 3)."""
        width, height = image.size
        crop = min(width, height)
        left, top = (width - crop) / 2, (height - crop) / 2
        resized = image.resize(
            (self.size, self.size),
            Image.Resampling.BICUBIC,
            box=(left, top, left + crop, top + crop),
        )
        return np.asarray(resized)

    def normalise(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) from `pixels` to the model's float32 (N, 3, H, W)."""
        return ((batch.astype(np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2)

    def normalise_torch(self, batch):
        """`normalise` in torch ops: what an exported graph runs on its uint8 input."""
        return ((batch.float() - self.mean) / self.std).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class ClipPixels:
    """CLIP's preprocessing as its checkpoint's image processor configures it.

    `shortest_edge` resizes keeping the aspect ratio (the long side truncated
    like transformers does); otherwise `height` x `width` exactly.
    """

    shortest_edge: int | None
    height: int | None
    width: int | None
    crop_height: int
    crop_width: int
    resample: int
    rescale_factor: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    @classmethod
    def from_processor(cls, processor) -> ClipPixels:
        """The recipe of a transformers CLIP image processor; ValueError for settings it does not cover."""
        size, crop = processor.size, processor.crop_size
        if getattr(processor, "do_pad", None):
            raise ValueError("image processors that pad are not supported")
        if size.longest_edge or size.max_height or size.max_pixels or size.min_pixels:
            raise ValueError(f"resize rule {size} is not supported")
        if not size.shortest_edge and not (size.height and size.width):
            raise ValueError(f"resize rule {size} is not supported")
        if processor.do_center_crop and not (crop.height and crop.width):
            raise ValueError(f"crop size {crop} is not supported")
        mean, std = processor.image_mean, processor.image_std
        return cls(
            shortest_edge=size.shortest_edge,
            height=None if size.shortest_edge else size.height,
            width=None if size.shortest_edge else size.width,
            crop_height=crop.height or 0,
            crop_width=crop.width or 0,
            resample=int(processor.resample),
            rescale_factor=float(processor.rescale_factor),
            image_mean=tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)),
            image_std=tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3)),
            do_resize=bool(processor.do_resize),
            do_center_crop=bool(processor.do_center_crop),
            do_rescale=bool(processor.do_rescale),
            do_normalize=bool(processor.do_normalize),
            do_convert_rgb=bool(processor.do_convert_rgb),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalise(self.pixels(image)[None])[0]

    def pixels(self, image: Image.Image) -> np.ndarray:
        """Resized and centre-cropped, uint8 (H, W, C)."""
        if self.do_convert_rgb:
            image = _to_rgb(image)
        if self.do_resize:
            image = image.resize(self.resized_size(image.size), resample=self.resample)
        pixels = np.asarray(image)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        if self.do_center_crop:
            pixels = _centre_crop(pixels.transpose(2, 0, 1), self.crop_height, self.crop_width).transpose(1, 2, 0)
        return pixels

    def normalise(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) from `pixels` to float32 (N, C, H, W), in the processor's float steps."""
        pixels = batch.transpose(0, 3, 1, 2)
        if self.do_rescale:
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            pixels = pixels.astype(np.float32, copy=False)
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels.astype(np.float32, copy=False)

    def normalise_torch(self, batch):
        """`normalise` in torch ops: what an exported graph runs on its uint8 input."""
        import torch

        pixels = batch.permute(0, 3, 1, 2)
        if self.do_rescale:
            pixels = (pixels.double() * self.rescale_factor).float()
        pixels = pixels.float()
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
            std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after the resize, rounded as transformers rounds it."""
        if not self.shortest_edge:
            return self.width, self.height
        width, height = size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (transformers' `convert_to_rgb`)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _centre_crop(pixels: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """Crop (C, H, W) around the centre, zero-padding an image smaller than the crop."""
    _, height, width = pixels.shape
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return pixels[:, top : top + crop_height, left : left + crop_width]
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    padded = np.zeros((pixels.shape[0], new_height, new_width), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
    padded[:, top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top) : min(new_height, top + crop_height), max(0, left) : min(new_width, left + crop_width)]


RECIPES = {"centre-square": CentreSquare, "clip": ClipPixels}


def recipe_to_dict(recipe: CentreSquare | ClipPixels) -> dict:
    kind = next(name for name, cls in RECIPES.items() if isinstance(recipe, cls))
    return {"kind": kind, **asdict(recipe)}


def recipe_from_dict(data: dict) -> CentreSquare | ClipPixels:
    """The recipe a sidecar recorded; KeyError or TypeError when it is not one this code knows."""
    cls = RECIPES[data["kind"]]
    names = {f.name for f in fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
    if not set(values) <= names:
        raise TypeError(f"unknown recipe fields {sorted(set(values) - names)}")
    return cls(**values)
