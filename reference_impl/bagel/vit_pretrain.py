"""SigLIP-style pretraining of the tiny vision encoder, the stand-in for BAGEL's pretrained SigLIP.

BAGEL starts from a SigLIP encoder that was pretrained on image-text pairs with the
sigmoid loss (Zhai et al., arXiv 2303.15343), and it loads all blocks but the last
one together with the post-LayerNorm. The tiny demo has no such checkpoint, so it
pretrains its own encoder with the same loss on training-split shape images and
their captions, then loads it the way BAGEL loads SigLIP (``encoder_weights``).

Three simplifications keep this file short:

* The image embedding is the mean of the patch features after the post-LayerNorm
  (SigLIP has an attention-pooling head).
* The text tower is the mean of byte embeddings and a linear layer (SigLIP's is a
  transformer). The 12 captions have different bytes, so it can tell them apart.
* Pairs whose captions are equal count as positives. SigLIP counts only the matching
  pair, but with 12 classes a batch contains many copies of each caption.

The sigmoid loss of a batch of n pairs, with image and text embeddings x_i and y_j
normalised to unit length, is

    L = -(1 / n) * sum_ij log sigmoid(z_ij * (exp(t') * x_i . y_j + b)),

where z_ij is +1 for a positive pair and -1 otherwise. The learned log temperature
t' and bias b start at log 10 and -10, the values of the SigLIP paper.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .config import ViTConfig
from .data import CLASSES, IMAGE_SIZES, ShapeSpec, caption_for, heldout_specs, sample_spec
from .layers import init_weights
from .packing import grid_position_ids, patchify
from .tokenizer import VOCAB_SIZE, ByteTokenizer
from .vit import VisionTransformer

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Settings of the encoder pretraining. With ``steps`` 0 the encoder starts from scratch."""

    steps: int = 600
    batch_size: int = 16  # images per image size per step, so 48 pairs per step
    lr: float = 2e-3
    # Linear warm-up over warmup_steps (or a fifth of a shorter run), then linear decay to
    # lr / steps at the last step. The decay matters: in runs of 600 steps, held-out zero-shot
    # accuracy was 0.84-0.91 at a constant rate and 0.98 with it.
    warmup_steps: int = 50
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"ViT pretraining steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"ViT pretraining batch_size must be >= 1, got {self.batch_size}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"ViT pretraining lr must be a positive finite number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"ViT pretraining warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class PretrainResult:
    encoder: VisionTransformer  # every block of the pretrained encoder, last one included
    losses: list[float] = field(default_factory=list)  # sigmoid loss per step
    zero_shot_accuracy: float | None = None  # held-out images matched to the nearest of the 12 captions


def full_encoder_config(config: ViTConfig) -> ViTConfig:
    """Return ``config`` with every block in use: the encoder as pretrained, before BAGEL drops its last block."""
    return dataclasses.replace(config, select_layer=-1)


class ContrastiveTowers(nn.Module):
    """The encoder under pretraining, an image projection, a bag-of-bytes text tower, t' and b."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = full_encoder_config(config)
        width = config.hidden_size
        self.encoder = VisionTransformer(self.config)
        self.encoder.apply(partial(init_weights, std=config.initializer_range))
        self.image_projection = nn.Linear(width, width)
        self.text_embedding = nn.EmbeddingBag(VOCAB_SIZE, width, mode="mean")
        self.text_projection = nn.Linear(width, width)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def embed_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Encode images [3, H, W] (sizes may differ, packed NaViT-style) to unit vectors [B, D]."""
        patch_size, side = self.config.patch_size, self.config.max_patches_per_side
        patches, position_ids, seqlens = [], [], []
        for image in images:
            h, w = image.shape[1] // patch_size, image.shape[2] // patch_size
            patches.append(patchify(image.float(), patch_size))
            position_ids.append(grid_position_ids(h, w, side))
            seqlens.append(h * w)
        features = self.encoder(torch.cat(patches), torch.cat(position_ids), seqlens)  # [N, D]
        pooled = torch.stack([f.mean(dim=0) for f in features.split(seqlens)])  # [B, D]
        return F.normalize(self.image_projection(pooled), dim=-1)

    def embed_texts(self, token_ids: list[list[int]]) -> torch.Tensor:
        """Embed token id lists to unit vectors [B, D]."""
        flat = torch.tensor([i for ids in token_ids for i in ids])
        offsets = torch.tensor([0] + [len(ids) for ids in token_ids[:-1]]).cumsum(0)
        return F.normalize(self.text_projection(self.text_embedding(flat, offsets)), dim=-1)


def sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    log_temperature: torch.Tensor,
    bias: torch.Tensor,
    positives: torch.Tensor,
) -> torch.Tensor:
    """Return the SigLIP loss of unit embeddings [n, D], where ``positives`` [n, n] is True for z_ij = +1."""
    logits = image_embeds @ text_embeds.T * log_temperature.exp() + bias  # [n, n]
    signs = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / image_embeds.shape[0]


def _draw_pairs(batch_size: int, generator: torch.Generator) -> list[ShapeSpec]:
    return [sample_spec(generator, "train", image_size=hw) for hw in IMAGE_SIZES for _ in range(batch_size)]


@torch.no_grad()
def zero_shot_accuracy(towers: ContrastiveTowers, specs: list[ShapeSpec]) -> float:
    """Return the fraction of images whose nearest caption among the 12 classes is their own."""
    tokenizer = ByteTokenizer()
    names = [caption_for(color, shape) for color, shape in CLASSES]
    text_embeds = towers.embed_texts([tokenizer.encode(name) for name in names])  # [12, D]
    image_embeds = towers.embed_images([spec.render() for spec in specs])  # [B, D]
    predictions = (image_embeds @ text_embeds.T).argmax(dim=-1).tolist()
    return sum(names[p] == spec.caption for p, spec in zip(predictions, specs, strict=True)) / len(specs)


def pretrain_vision_encoder(
    vit_config: ViTConfig, config: PretrainConfig, seed: int = 0, num_eval_images: int = 300
) -> PretrainResult:
    """Pretrain a full encoder of ``vit_config`` with the sigmoid loss on training-split shapes.

    Returns the encoder (all blocks), the loss per step and the zero-shot caption accuracy
    on ``num_eval_images`` held-out images (None when 0).
    """
    torch.manual_seed(seed)
    towers = ContrastiveTowers(vit_config)
    optimizer = torch.optim.AdamW(towers.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, min(config.warmup_steps, config.steps // 5))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * (1.0 - step / max(config.steps, 1))
    )
    generator = torch.Generator().manual_seed(seed)
    tokenizer = ByteTokenizer()

    losses = []
    for step in range(config.steps):
        specs = _draw_pairs(config.batch_size, generator)
        captions = [spec.caption for spec in specs]
        positives = torch.tensor([[a == b for b in captions] for a in captions])
        image_embeds = towers.embed_images([spec.render() for spec in specs])
        text_embeds = towers.embed_texts([tokenizer.encode(c) for c in captions])
        loss = sigmoid_loss(image_embeds, text_embeds, towers.log_temperature, towers.bias, positives)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(towers.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == config.steps - 1:
            logger.info("ViT pretraining step %d/%d: sigmoid loss %.4f", step + 1, config.steps, loss.item())

    towers.eval()
    accuracy = None
    if num_eval_images > 0:
        accuracy = zero_shot_accuracy(towers, heldout_specs(num_eval_images, seed=seed + 99))
        logger.info("ViT pretraining: zero-shot accuracy on %d held-out images %.3f", num_eval_images, accuracy)
    return PretrainResult(towers.encoder.requires_grad_(False), losses, accuracy)


def encoder_weights(pretrained: VisionTransformer, config: ViTConfig) -> dict[str, torch.Tensor]:
    """Select the weights that a ``VisionTransformer(config)`` loads from a fully built encoder.

    As BAGEL does with SigLIP, blocks from ``config.num_used_layers`` on are dropped and the
    patch embedding, position table and post-LayerNorm are kept.
    """
    used = config.num_used_layers
    weights = {}
    for name, tensor in pretrained.state_dict().items():
        if name.startswith("layers.") and int(name.split(".")[1]) >= used:
            continue
        weights[name] = tensor.clone()
    return weights
