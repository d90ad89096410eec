"""Open-vocabulary product detection with OWLv2 (transformers), one region per detected product.

Prompts name what to look for ("a handbag"); a prompt may carry the catalogue
category its products belong to ("a handbag=W Bags"), and the region is then
searched within that category only. Weights come from the Hugging Face hub
(default google/owlv2-base-patch16-ensemble) or a local folder, loaded with
`from_pretrained` like the CLIP encoders. OWLv2 base reads a 960x960 image,
slow on a CPU (benchmarks/RESULTS.md); it is meant for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from indexer.errors import ModelLoadError, first_line
from search.locate import CentreViews, Localiser, Region, expand, non_max_suppression

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DEFAULT_PROMPTS = (
    "a handbag",
    "a shoe",
    "a pair of sunglasses",
    "a wristwatch",
    "a wallet",
    "a scarf",
    "a belt",
    "a hat",
    "a necklace",
    "a piece of clothing",
)
#: OWL's text encoder reads 16 tokens.
PROMPT_TOKENS = 16
#: Boxes are grown by this share on each side: a tight box cuts off handles and heels.
BOX_MARGIN = 0.08


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str | None = None

    @classmethod
    def parse(cls, value: str) -> Prompt:
        text, _, category = value.partition("=")
        return cls(text.strip(), category.strip() or None)


class OwlDetector(Localiser):
    name = "owlv2"

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        *,
        prompts: tuple[Prompt, ...] = tuple(Prompt(p) for p in DEFAULT_PROMPTS),
        threshold: float = 0.2,
        max_regions: int = 5,
        overlap: float = 0.3,
        device: str = "cpu",
    ):
        import torch  # noqa: F401  (fail here, not mid-search, if torch is missing)
        import transformers
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        try:
            self._processor = Owlv2Processor.from_pretrained(model)
            self._model = Owlv2ForObjectDetection.from_pretrained(model).eval().to(device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load detector {model!r}: {first_line(exc)}. Pass a local OWLv2 folder with --detector, "
                "or use --locate centre (no detector)"
            ) from None
        if not prompts:
            raise ModelLoadError("the detector needs at least one prompt")
        self.prompts = prompts
        self.threshold = threshold
        self.max_regions = max_regions
        self.overlap = overlap
        self.device = device

    def detect(self, image: Image.Image) -> list[tuple[tuple[int, int, int, int], float, Prompt]]:
        """(box, score, prompt) of every detection above the threshold, before suppression."""
        import torch

        inputs = self._processor(
            text=[[p.text for p in self.prompts]],
            images=image,
            return_tensors="pt",
            padding="max_length",
            max_length=PROMPT_TOKENS,
            truncation=True,
        ).to(self.device)
        with torch.inference_mode():
            outputs = self._model(**inputs)
        # OWLv2 pads the photo to a square (right and bottom) before resizing: boxes are in that square.
        side = max(image.size)
        [result] = self._processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(side, side)]
        )
        found = []
        for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist()):
            x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
            x1, y1 = min(image.width, round(box[2])), min(image.height, round(box[3]))
            if x1 - x0 >= 8 and y1 - y0 >= 8:
                found.append(((x0, y0, x1, y1), float(score), self.prompts[int(label)]))
        return found

    def locate(self, image: Image.Image) -> list[Region]:
        found = self.detect(image)
        if not found:
            return CentreViews().locate(image)  # nothing recognisable: fall back to the centre prior
        scores = np.array([score for _, score, _ in found])
        keep = non_max_suppression([box for box, _, _ in found], scores, self.overlap)[: self.max_regions]
        regions = []
        for i in keep:
            box, score, prompt = found[i]
            grown = expand(box, image.size, BOX_MARGIN)
            regions.append(Region(box=grown, views=(grown,), score=score, label=prompt.text))
        return regions

    def category_of(self, label: str | None) -> str | None:
        return next((p.category for p in self.prompts if p.text == label), None)
