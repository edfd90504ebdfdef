"""Pooled subject vectors against manual pooling of the decoder's hidden states."""

from __future__ import annotations

import pytest
import torch

from reference_impl.bagel.embeddings import extract_embeddings
from reference_impl.bagel.packing import SequenceItem, pack_samples


@pytest.fixture
def batch(config):
    torch.manual_seed(5)
    first = [SequenceItem("text", text_ids=[1, 2]), SequenceItem("vit_image", image=torch.rand(3, 16, 16) * 2 - 1),
             SequenceItem("vae_image", latent=torch.randn(config.latent_channels, 4, 4))]
    second = [SequenceItem("text", text_ids=[3, 4, 5])]
    return pack_samples([first, second], config)


def _hidden(model, batch, layer):
    output, _ = model.run_decoder(batch, noise=torch.zeros(batch.packed_latent.shape), output_hidden_states=True)
    return output.hidden_states[layer].detach()


@pytest.mark.parametrize("layer", [2, -1])
def test_mean_pooling_per_modality(model, batch, layer):
    hidden = _hidden(model, batch, layer)
    pooled = extract_embeddings(model, batch, layer=layer, pooling="mean")
    # Sample 0: text 0-3, vision_start 4, ViT 5-8, vision_end 9, vision_start 10, VAE 11-14, vision_end 15.
    text_rows = [0, 1, 2, 3, 4, 9, 10, 15]
    torch.testing.assert_close(pooled["text"][0], hidden[text_rows].mean(0))
    torch.testing.assert_close(pooled["vit"][0], hidden[5:9].mean(0))
    torch.testing.assert_close(pooled["vae"][0], hidden[11:15].mean(0))
    torch.testing.assert_close(pooled["text"][1], hidden[16:].mean(0))
    assert torch.isnan(pooled["vit"][1]).all()  # sample 1 has no image


def test_last_pooling(model, batch):
    hidden = _hidden(model, batch, -1)
    pooled = extract_embeddings(model, batch, pooling="last")
    torch.testing.assert_close(pooled["text"][0], hidden[15])
    torch.testing.assert_close(pooled["vit"][0], hidden[8])
    torch.testing.assert_close(pooled["text"][1], hidden[-1])


def test_pooling_without_modalities(model, batch):
    hidden = _hidden(model, batch, 0)
    pooled = extract_embeddings(model, batch, layer=0, per_modality=False)
    assert list(pooled) == ["all"]
    torch.testing.assert_close(pooled["all"][0], hidden[:16].mean(0))
    torch.testing.assert_close(pooled["all"][1], hidden[16:].mean(0))


def test_default_layer_is_head_input(model, batch):
    pooled = extract_embeddings(model, batch, per_modality=False)
    head_input = model(batch, noise=torch.zeros(batch.packed_latent.shape)).last_hidden_state.detach()
    torch.testing.assert_close(pooled["all"][1], head_input[16:].mean(0))


def test_invalid_arguments(model, batch):
    with pytest.raises(ValueError, match="layer=9"):
        extract_embeddings(model, batch, layer=9)
    with pytest.raises(ValueError, match="pooling='max'"):
        extract_embeddings(model, batch, pooling="max")
