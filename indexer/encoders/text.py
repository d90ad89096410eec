"""CLIP's text tower: sentences to unit vectors in the same space as that checkpoint's image vectors.

Text search ("a red leather handbag") compares these vectors with the
catalogue's CLIP image vectors, so both must come from one checkpoint: the
text tower and its projection load from the folder or hub id the collection
was built with, with that checkpoint's own tokenizer. Models without a text
tower (the EfficientNet-Lite backbones, vision-only CLIP checkpoints, a
folder saved without the text weights or the tokenizer) are refused up front
rather than answering with random vectors. Runs on torch: it is meant for a
warm server, where import time does not matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.encoders import l2_normalise, model_id_for
from indexer.errors import ModelLoadError, first_line

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_LEGACY_EOS = 2  # transformers' marker for configs that pool at the highest token id instead


class TextEncoder:
    """A loaded CLIP text tower: `embed_texts(texts)` -> unit vectors (n, dim)."""

    batch_size: int = 64

    def __init__(self, model: str, *, device: str = "cpu"):
        import transformers
        from transformers import AutoConfig, AutoTokenizer, CLIPTextModelWithProjection

        from indexer.encoders import _torch

        name = model_id_for(model)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(name)
            if config.model_type != "clip" or not hasattr(config, "text_config"):
                raise ModelLoadError(
                    f"model {name!r} has no text tower ({config.model_type!r} checkpoint); text search needs a full CLIP checkpoint"
                )
            text_config = config.text_config
            text_config.projection_dim = config.projection_dim
            network, info = CLIPTextModelWithProjection.from_pretrained(name, config=text_config, output_loading_info=True)
            if info["missing_keys"]:
                raise ModelLoadError(f"model {name!r} has no text tower: its checkpoint was saved without the text weights")
            if Path(name).is_dir() and not any((Path(name) / file).is_file() for file in _TOKENIZER_FILES):
                raise ModelLoadError(
                    f"model {name!r} has no text tower: its folder has no tokenizer ({' or '.join(_TOKENIZER_FILES)})"
                )
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the text tower of {name!r}: {first_line(exc)}") from None
        _check_tokenizer(name, tokenizer, text_config)
        self.model_id = name
        self.device = device
        self.dim = int(config.projection_dim)
        self.max_length = int(text_config.max_position_embeddings)
        self._tokenizer = tokenizer
        self._network = _torch.prepare(network, device)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (len(texts), dim) float32; texts longer than the tower's context are truncated."""
        chunks = [self._embed(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            output = self._network(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        return l2_normalise(output.text_embeds.float().cpu().numpy())


def _check_tokenizer(name: str, tokenizer, text_config) -> None:
    """A tokenizer that does not fit the tower gives vectors that look fine and mean nothing: refuse it."""
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ModelLoadError(f"model {name!r} has no text tower: its tokenizer has no vocabulary")
    if len(tokenizer) > text_config.vocab_size:
        raise ModelLoadError(
            f"model {name!r}: its tokenizer has {len(tokenizer)} tokens but its text tower only {text_config.vocab_size}"
        )
    if text_config.eos_token_id != _LEGACY_EOS and tokenizer.eos_token_id != text_config.eos_token_id:
        raise ModelLoadError(
            f"model {name!r}: its tokenizer ends texts with token {tokenizer.eos_token_id}, "
            f"its text tower expects {text_config.eos_token_id}"
        )
