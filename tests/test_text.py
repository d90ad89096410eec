"""CLIP's text tower: unit vectors in the image vectors' space, and a clear refusal for models without one.

The tiny random CLIP checkpoint saves no tokenizer, so these tests write a
real CLIP BPE vocabulary of a few dozen tokens next to its weights and load
it through the production path (`AutoTokenizer.from_pretrained`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from indexer.encoders import load_encoder, load_text_encoder
from indexer.errors import ModelLoadError
from indexer.images import load_rgb

TEXTS = ["red bag", "a red bag", "bag", "xyz", "a bag " * 20]  # the last one is longer than the tower's 32 positions


@pytest.fixture(scope="module")
def text_encoder(clip_with_tokenizer):
    return load_text_encoder(clip_with_tokenizer, device="cpu")


def test_texts_become_unit_vectors_of_the_image_dimension(text_encoder, clip_with_tokenizer):
    vectors = text_encoder.embed_texts(TEXTS)
    image_encoder = load_encoder(clip_with_tokenizer, device="cpu")
    assert vectors.shape == (len(TEXTS), image_encoder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert text_encoder.embed_texts([]).shape == (0, image_encoder.dim)
    # Padding a text to a longer neighbour's length does not change it; different texts differ.
    assert np.abs(text_encoder.embed_texts(TEXTS[:1])[0] - vectors[0]).max() < 1e-5
    assert np.abs(vectors[0] - vectors[2]).max() > 1e-3


def test_text_and_image_vectors_share_clip_space(text_encoder, clip_with_tokenizer):
    """Our image and text vectors' cosines are CLIP's own image-text logits (before its temperature)."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    images = [load_rgb(path) for path in sorted((DATA / "dam").glob("*.jpeg"))[:3]]
    image_encoder = load_encoder(clip_with_tokenizer, device="cpu")
    ours = image_encoder.embed(images) @ text_encoder.embed_texts(TEXTS).T

    model = CLIPModel.from_pretrained(clip_with_tokenizer).eval()
    tokens = AutoTokenizer.from_pretrained(clip_with_tokenizer)(
        TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    pixels = torch.from_numpy(np.stack([image_encoder.preprocess(image) for image in images]))
    with torch.inference_mode():
        output = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
        reference = (output.logits_per_image / model.logit_scale.exp()).numpy()
    assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize("model", ["efficientnet-lite0", "efficientnet-lite2"])
def test_image_only_backbones_have_no_text_tower(model):
    with pytest.raises(ModelLoadError, match="has no text tower"):
        load_text_encoder(model, device="cpu")


def test_a_checkpoint_without_tokenizer_is_refused(tiny_clip):
    with pytest.raises(ModelLoadError, match="no text tower: its folder has no tokenizer"):
        load_text_encoder(tiny_clip, device="cpu")


def test_a_checkpoint_without_text_weights_is_refused(clip_with_tokenizer, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = Path(shutil.copytree(clip_with_tokenizer, tmp_path / "vision-only"))
    weights = load_file(folder / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("text_")}, folder / "model.safetensors", metadata={"format": "pt"}
    )
    with pytest.raises(ModelLoadError, match="saved without the text weights"):
        load_text_encoder(str(folder), device="cpu")
    # The image tower still loads from it.
    assert load_encoder(str(folder), device="cpu").dim == 16


def test_a_vision_only_checkpoint_is_refused(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="has no text tower"):
        load_text_encoder(str(tmp_path), device="cpu")
