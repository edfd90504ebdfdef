"""Demo evaluation: batched captions equal single ones, and each metric can be skipped."""

from __future__ import annotations

import pytest
import torch

from reference_impl.bagel.config import get_preset
from reference_impl.bagel.data import ShapeSpec
from reference_impl.bagel.evaluate import caption_images, evaluate, evaluation_settings
from reference_impl.bagel.inference import caption
from reference_impl.bagel.model import Bagel
from reference_impl.bagel.tokenizer import ByteTokenizer
from reference_impl.bagel.vae import PixelUnshuffleVAE


@pytest.fixture(scope="module")
def model() -> Bagel:
    torch.manual_seed(0)
    return Bagel(get_preset("tiny", latent_channels=48)).eval()


def test_caption_images_equal_single_captions(model):
    # Three sizes in mixed order, so the batches regroup images and must put captions back in order.
    images = [
        ShapeSpec("circle", "red", 32, 32, 12, 4, 4).render(),
        ShapeSpec("square", "blue", 24, 32, 10, 2, 8).render(),
        ShapeSpec("triangle", "green", 32, 24, 14, 6, 2).render(),
        ShapeSpec("square", "yellow", 32, 32, 16, 0, 0).render(),
    ]
    tokenizer = ByteTokenizer()
    batched = caption_images(model, tokenizer, images)
    assert batched == [caption(model, tokenizer, image, max_new_tokens=24) for image in images]


def test_evaluate_skips_captions(model):
    settings = evaluation_settings(steps=2)
    metrics, images = evaluate(model, PixelUnshuffleVAE(), settings, num_caption_images=0, per_class=1)
    assert "caption_exact_match" not in metrics
    assert len(images["cfg"]) == 12
    assert len(images["no_cfg"]) == 12
    assert 0.0 <= metrics["generation_cfg"]["color_accuracy"] <= 1.0


def test_evaluate_skips_generation(model):
    metrics, images = evaluate(model, PixelUnshuffleVAE(), num_caption_images=3, per_class=0)
    assert 0.0 <= metrics["caption_exact_match"] <= 1.0
    assert "generation_cfg" not in metrics
    assert images == {}
