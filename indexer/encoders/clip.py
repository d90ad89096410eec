"""CLIP image tower from any Hugging Face checkpoint (FashionCLIP by default).

Only the vision encoder and its projection are loaded, and the image
processor comes from the same checkpoint, so preprocessing cannot drift from
what the weights were trained with. `recipe` writes that processor's
settings down for the ONNX runtime, which repeats them without transformers
(`pixels.ClipPixels`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from indexer.encoders import Encoder
from indexer.encoders.pixels import ClipPixels
from indexer.errors import ModelLoadError, first_line


class CLIPEncoder(Encoder):
    def __init__(self, name_or_path: str, *, device: str = "cpu", dtype: str = "auto"):
        import transformers
        from transformers import (
            AutoConfig,
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
        )

        from indexer.encoders import _torch

        # The text tower's weights are unused on purpose; loading bars would garble our own progress.
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(name_or_path)
            if isinstance(config, CLIPVisionConfig):
                vision_config = config
            elif hasattr(config, "vision_config") and config.model_type == "clip":
                vision_config = config.vision_config
                vision_config.projection_dim = config.projection_dim
            else:
                raise ModelLoadError(
                    f"model {name_or_path!r} is a {config.model_type!r} checkpoint, not CLIP; "
                    "pass a CLIP checkpoint or one of the offline models"
                )
            model = CLIPVisionModelWithProjection.from_pretrained(name_or_path, config=vision_config)
            self._processor = _image_processor_class().from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load model {name_or_path!r}: {first_line(exc)}. Pass a local checkpoint folder with "
                "--model, or use --model efficientnet-lite0 to work offline"
            ) from None
        self.model_id = name_or_path
        self.device = device
        self.dim = int(vision_config.projection_dim)
        self.dtype = dtype
        self.network = _torch.prepare(_torch.Features(model, _image_embeds), device, dtype)

    @property
    def recipe(self) -> ClipPixels:
        """This checkpoint's preprocessing for runtimes without transformers (ValueError if it cannot be written so)."""
        return ClipPixels.from_processor(self._processor)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        pixels = self._processor(images=image, return_tensors="np")["pixel_values"]
        return pixels[0].astype(np.float32)

    def input_step(self):
        """The recipe, equal to the processor to 1e-6 (tested); None for settings it does not cover."""
        try:
            return self.recipe
        except ValueError:
            return None

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        from indexer.encoders import _torch

        return _torch.run(self.network, batch, self.device, self.dtype)


def _image_embeds(model, pixels):
    return model(pixel_values=pixels).image_embeds


def _image_processor_class():
    """The PIL implementation of CLIP's preprocessing: it runs per image in our worker threads,
    needs no torchvision, and gives the same pixels on every machine."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
