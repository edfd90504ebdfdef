"""Autoencoders: exact lossless round trip, latent normalisation, conv reconstruction after training."""

from __future__ import annotations

import pytest
import torch

from reference_impl.bagel.data import sample_images
from reference_impl.bagel.vae import ConvAutoencoder, ConvAutoencoderConfig, PixelUnshuffleVAE, train_autoencoder


def _images(seed: int = 0, batch_size: int = 4, split: str = "train") -> list[torch.Tensor]:
    return sample_images(batch_size, torch.Generator().manual_seed(seed), split)


def test_pixel_unshuffle_round_trip_is_exact():
    vae = PixelUnshuffleVAE(downsample=4)
    for images in _images():
        latents = vae.encode(images)
        assert latents.shape == (images.shape[0], 48, images.shape[2] // 4, images.shape[3] // 4)
        assert torch.equal(vae.decode(latents), images)


def test_scale_shift_applied_and_inverted():
    vae = PixelUnshuffleVAE(downsample=4, shift=0.1159, scale=0.3611)
    images = _images()[0]
    raw = torch.nn.functional.pixel_unshuffle(images, 4)
    latents = vae.encode(images)
    torch.testing.assert_close(latents, 0.3611 * (raw - 0.1159))
    torch.testing.assert_close(vae.decode(latents), images, atol=1e-6, rtol=0)


def test_encode_rejects_size_not_multiple_of_factor():
    vae = PixelUnshuffleVAE(downsample=4)
    with pytest.raises(ValueError, match="multiple of"):
        vae.encode(torch.zeros(1, 3, 30, 32))


def test_decode_rejects_wrong_channel_count():
    vae = PixelUnshuffleVAE(downsample=4)
    with pytest.raises(ValueError, match="48"):
        vae.decode(torch.zeros(1, 4, 8, 8))


def test_conv_autoencoder_learns_and_calibrates():
    torch.manual_seed(0)
    vae = ConvAutoencoder(ConvAutoencoderConfig(width=32))
    losses = train_autoencoder(vae, sample_images, steps=120, batch_size=4, lr=3e-3, generator=torch.Generator().manual_seed(0))
    assert not any(p.requires_grad for p in vae.parameters())

    held_out = _images(seed=1, batch_size=16, split="heldout")
    with torch.no_grad():
        latents = [vae.encode(x) for x in held_out]
        errors = [torch.mean((vae.decode(z) - x) ** 2).item() for z, x in zip(latents, held_out)]
    # Predicting an all-black image scores the mean squared foreground contrast.
    black_baseline = [torch.mean((x + 1) ** 2).item() for x in held_out]
    for error, baseline in zip(errors, black_baseline):
        assert error < 0.5 * baseline
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])

    # Shift and scale normalise the latents to roughly zero mean and unit spread.
    flat = torch.cat([z.flatten() for z in latents])
    assert abs(flat.mean().item()) < 0.3
    assert 0.6 < flat.std().item() < 1.5
    for name in ("shift", "scale"):
        assert name in vae.state_dict()
