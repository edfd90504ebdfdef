"""Subject-level vectors from a trained model: pooled hidden states per sample and modality.

A neuro-omics workflow packs each subject's items (text, ViT images, VAE latents) as one
sample, runs the decoder once and pools the hidden states of one layer into a vector
per subject, optionally one per modality.
"""

from __future__ import annotations

import torch

from .model import Bagel
from .packing import PackedBatch

POOLINGS = ("mean", "last")
MODALITY_NAMES = ("text", "vit", "vae")


def token_modalities(batch: PackedBatch) -> torch.Tensor:
    """Return the modality index of every token [T]: 0 text (including markers), 1 ViT, 2 VAE."""
    modalities = torch.full((batch.sequence_length,), -1, dtype=torch.long)
    modalities[batch.packed_text_indexes.cpu()] = 0
    modalities[batch.packed_vit_token_indexes.cpu()] = 1
    modalities[batch.packed_vae_token_indexes.cpu()] = 2
    return modalities


def _pool(hidden_states: torch.Tensor, rows: torch.Tensor, pooling: str) -> torch.Tensor:
    if rows.numel() == 0:
        # No token of this modality in the sample.
        return torch.full((hidden_states.shape[-1],), float("nan"), dtype=hidden_states.dtype)
    if pooling == "mean":
        return hidden_states[rows].mean(dim=0)
    return hidden_states[rows[-1]]


@torch.no_grad()
def extract_embeddings(
    model: Bagel,
    batch: PackedBatch,
    layer: int = -1,
    pooling: str = "mean",
    per_modality: bool = True,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Pool the hidden states of `layer` into one [num_samples, H] tensor per modality.

    `layer` indexes the decoder's hidden states: 0 is the input embeddings, i the output of
    layer i, and -1 (or num_hidden_layers) the final-normed states that the heads read.
    Keys are "text", "vit" and "vae", or only "all" when `per_modality` is False. A sample
    without tokens of a modality gets a row of NaN. Noisy VAE items use `noise`
    (default zeros, so x_t = (1 - t) x0 and the result is deterministic).
    """
    num_layers = model.config.llm.num_hidden_layers
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"layer={layer} is out of range [-{num_layers + 1}, {num_layers}]")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is invalid; expected one of {POOLINGS}")

    if noise is None:
        noise = torch.zeros_like(batch.packed_latent)
    output, _ = model.run_decoder(batch, noise=noise, output_hidden_states=True)
    hidden_states = output.hidden_states[layer].float().cpu()  # [T, H]

    sample_ids = batch.sample_ids()
    modalities = token_modalities(batch)
    groups = {name: modalities == index for index, name in enumerate(MODALITY_NAMES)}
    if not per_modality:
        groups = {"all": torch.ones_like(modalities, dtype=torch.bool)}

    pooled = {}
    for name, in_group in groups.items():
        rows_per_sample = [
            ((sample_ids == sample) & in_group).nonzero(as_tuple=True)[0] for sample in range(batch.num_samples)
        ]
        pooled[name] = torch.stack([_pool(hidden_states, rows, pooling) for rows in rows_per_sample])
    return pooled
