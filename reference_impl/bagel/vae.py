"""Image autoencoders that map pixels to the latents BAGEL's generation branch models.

BAGEL uses the FLUX autoencoder (8x downsampling, 16 channels) and normalises its
latents as ``0.3611 * (z - 0.1159)``. The tiny CPU configuration keeps that
interface with two small stand-ins:

* ``ConvAutoencoder``: a deterministic conv autoencoder (4x downsampling,
  4 channels), trained for a few hundred steps on the synthetic images and then
  frozen. Its shift and scale are the mean and 1/std of its raw latents on the
  training images, which is how the FLUX constants were chosen.
* ``PixelUnshuffleVAE``: a lossless rearrangement (4x downsampling,
  48 channels) that needs no training, for tests.

Both take and return pixels in [-1, 1].
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class LatentAutoencoder(nn.Module):
    """Base class: ``encode`` returns ``scale * (z - shift)`` and ``decode`` inverts it.

    Subclasses implement ``raw_encode`` ([B, 3, H, W] -> [B, C, H/f, W/f]) and
    ``raw_decode``. ``shift`` and ``scale`` are buffers, so they are saved with
    the weights.
    """

    downsample: int
    latent_channels: int

    def __init__(self, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def raw_encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.downsample or width % self.downsample:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the autoencoder's "
                f"downsampling factor {self.downsample}; crop or resize the image first"
            )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode pixels in [-1, 1], [B, 3, H, W], to normalised latents [B, C, H/f, W/f]."""
        self._check_images(images)
        return self.scale * (self.raw_encode(images) - self.shift)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode normalised latents [B, C, h, w] to pixels [B, 3, h*f, w*f] in [-1, 1]."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents of shape [B, {self.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        return self.raw_decode(latents / self.scale + self.shift)

    @torch.no_grad()
    def calibrate(self, images: list[torch.Tensor]) -> None:
        """Set shift to the mean and scale to 1/std of the raw latents of ``images``.

        ``images`` is a list of [B, 3, H, W] batches, which may differ in size.
        """
        z = torch.cat([self.raw_encode(x).flatten() for x in images])
        self.shift.fill_(z.mean().item())
        self.scale.fill_(1.0 / max(z.std().item(), 1e-6))


class PixelUnshuffleVAE(LatentAutoencoder):
    """Lossless stand-in: each f x f x 3 pixel block becomes one latent vector of 3*f*f channels."""

    def __init__(self, downsample: int = 4, shift: float = 0.0, scale: float = 1.0):
        super().__init__(shift=shift, scale=scale)
        self.downsample = downsample
        self.latent_channels = 3 * downsample * downsample

    def raw_encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.downsample)

    def raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.downsample)


@dataclass
class ConvAutoencoderConfig:
    latent_channels: int = 4
    downsample: int = 4  # pixel (un)shuffle factor
    width: int = 32  # channels of the hidden convolutions, at latent resolution

    def __post_init__(self):
        if self.downsample != 4:
            raise ValueError(f"ConvAutoencoder supports downsample=4 only, got {self.downsample}")
        if self.latent_channels < 1 or self.width < 8 or self.width % 8:
            raise ValueError(
                f"latent_channels must be positive and width a positive multiple of 8 (GroupNorm groups), "
                f"got {self.latent_channels} and {self.width}"
            )


def _conv_norm_act(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels), nn.SiLU()]


class ConvAutoencoder(LatentAutoencoder):
    """Deterministic conv autoencoder, f = 4; FLUX's encoder instead samples a Gaussian posterior.

    Both halves work at the latent resolution: the encoder starts with a 4x4 pixel
    unshuffle and the decoder ends with a pixel shuffle, which keeps training on
    a CPU to seconds.
    """

    def __init__(self, config: ConvAutoencoderConfig | None = None):
        super().__init__()
        self.config = config or ConvAutoencoderConfig()
        self.downsample = f = self.config.downsample
        self.latent_channels = c = self.config.latent_channels
        w = self.config.width
        # GroupNorm after each hidden convolution, as in FLUX's autoencoder; without it the
        # reconstruction error stalls near the all-black image for the first few hundred steps.
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(f),  # [B, 3*f*f, H/f, W/f]
            *_conv_norm_act(3 * f * f, w),
            *_conv_norm_act(w, w),
            nn.Conv2d(w, c, 1),
        )
        self.decoder = nn.Sequential(
            *_conv_norm_act(c, w),
            *_conv_norm_act(w, w),
            nn.Conv2d(w, 3 * f * f, 3, padding=1),
            nn.PixelShuffle(f),  # [B, 3, H, W]
            nn.Tanh(),  # pixels in [-1, 1]
        )

    def raw_encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


FOREGROUND_WEIGHT = 5.0


def _weighted_reconstruction_error(vae: LatentAutoencoder, images: torch.Tensor) -> torch.Tensor:
    # Shapes cover ~15% of the pixels; weighting them 5x makes the first steps learn the
    # shapes' colours and edges instead of the black background alone.
    error = (vae.raw_decode(vae.raw_encode(images)) - images) ** 2  # [B, 3, H, W]
    foreground = (images > 0).any(dim=1, keepdim=True).float()  # [B, 1, H, W]
    return (error * (1 + (FOREGROUND_WEIGHT - 1) * foreground)).mean()


def train_autoencoder(
    vae: ConvAutoencoder,
    sample_images,
    steps: int = 400,
    batch_size: int = 8,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train ``vae`` to reconstruct images, calibrate its latent shift and scale, and freeze it.

    ``sample_images(batch_size, generator)`` must return a list of [B, 3, H, W]
    tensors in [-1, 1], one per image size. Returns the per-step mean squared
    foreground-weighted squared reconstruction error.
    """
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    # Cosine decay to zero: the last steps at a small learning rate sharpen the edges.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    vae.train()
    losses = []
    for step in range(steps):
        groups = sample_images(batch_size, generator)
        loss = sum(_weighted_reconstruction_error(vae, x) for x in groups) / len(groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            logger.info("autoencoder step %d/%d: reconstruction mse %.4f", step + 1, steps, loss.item())

    vae.eval()
    vae.calibrate(sample_images(4 * batch_size, generator))
    vae.requires_grad_(False)
    logger.info("autoencoder latent shift %.4f, scale %.4f", vae.shift.item(), vae.scale.item())
    return losses


def build_autoencoder(kind: str, config: dict | None = None) -> LatentAutoencoder:
    """Build an untrained autoencoder of ``kind`` ("conv" or "pixel_unshuffle")."""
    if kind == "conv":
        return ConvAutoencoder(ConvAutoencoderConfig(**(config or {})))
    if kind == "pixel_unshuffle":
        return PixelUnshuffleVAE(**(config or {}))
    raise ValueError(f"unknown autoencoder kind {kind!r}; expected 'conv' or 'pixel_unshuffle'")


def autoencoder_spec(vae: LatentAutoencoder) -> dict:
    """Return the JSON-serialisable description that ``build_autoencoder`` accepts."""
    if isinstance(vae, ConvAutoencoder):
        return {"kind": "conv", "config": asdict(vae.config)}
    if isinstance(vae, PixelUnshuffleVAE):
        return {"kind": "pixel_unshuffle", "config": {"downsample": vae.downsample}}
    raise TypeError(f"no serialisable description for {type(vae).__name__}")
