"""The BAGEL model: MoT decoder, ViT branch for understanding, latent flow branch for generation.

Training forward on a PackedBatch (BAGEL, arXiv 2505.14683):
1. Text and marker tokens are embedded, ViT tokens go through the ViT and the connector,
   VAE latent tokens are noised to x_t and embedded as vae2llm(x_t) + TimeEmb(t) + LatPos.
2. The MoT decoder runs once over the packed sequence under the generalised causal mask.
3. The untied LM head scores the CE positions and llm2vae predicts the velocity eps - x0 of
   the noisy latent tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .config import BagelConfig
from .flow import PositionTable2D, TimestepEmbedder, add_noise, velocity_target
from .layers import init_weights
from .mot import DecoderOutput, MoTDecoder
from .packing import PackedBatch
from .vit import VisionConnector, VisionTransformer


@dataclass
class BagelOutput:
    loss: torch.Tensor  # ce_weight * ce_loss + mse_weight * mse_loss
    ce_loss: torch.Tensor  # summed over CE tokens / num_ce_tokens
    mse_loss: torch.Tensor  # mean over channels per token, summed over noisy tokens / num_mse_tokens
    num_ce_tokens: int
    num_mse_tokens: int
    logits: torch.Tensor  # [N_ce, V] at ce_loss_indexes
    predicted_velocity: torch.Tensor  # [N_mse, p * p * C] at mse_loss_indexes
    target_velocity: torch.Tensor  # [N_mse, p * p * C]
    last_hidden_state: torch.Tensor  # [T, H] after the final norm


class Bagel(nn.Module):
    def __init__(self, config: BagelConfig):
        super().__init__()
        self.config = config
        llm = config.llm
        hidden = llm.hidden_size

        # Shared by all experts. The LM head is untied from the embedding.
        self.embed_tokens = nn.Embedding(llm.vocab_size, hidden)
        self.language_model = MoTDecoder(llm)
        self.lm_head = nn.Linear(hidden, llm.vocab_size, bias=False)

        # Understanding branch.
        self.vit = VisionTransformer(config.vit)
        self.connector = VisionConnector(config.vit.hidden_size, hidden, config.vit.max_patches_per_side)

        # Generation branch.
        self.vae2llm = nn.Linear(config.latent_token_dim, hidden)
        self.llm2vae = nn.Linear(hidden, config.latent_token_dim)
        self.time_embedder = TimestepEmbedder(hidden)
        self.latent_pos_embed = PositionTable2D(hidden, config.max_latent_size)

        # The decoder, embeddings, connector and generation heads use the decoder's range,
        # the vision encoder its own.
        self.apply(partial(init_weights, std=llm.initializer_range))
        self.vit.apply(partial(init_weights, std=config.vit.initializer_range))
        # Zero-initialised velocity head: the first prediction is 0 (BAGEL's llm2vae init).
        nn.init.zeros_(self.llm2vae.weight)
        nn.init.zeros_(self.llm2vae.bias)
        # Generation expert starts as a copy of the understanding expert.
        self.language_model.init_experts_from(0)

    # Embeddings of each modality, each [N, H].

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(token_ids)

    def embed_vit(
        self, vit_tokens: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        features = self.vit(vit_tokens.to(self.dtype), position_ids, seqlens)
        return self.connector(features, position_ids)

    def embed_latents(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        embeds = self.vae2llm(x_t.to(self.dtype)) + self.time_embedder(timesteps)
        return embeds + self.latent_pos_embed(position_ids).to(embeds.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def embed_packed(self, batch: PackedBatch, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter every modality's embeddings into a [T, H] buffer and return it with x_t of all latent tokens."""
        inputs_embeds = torch.zeros(
            batch.sequence_length, self.config.llm.hidden_size, device=self.device, dtype=self.dtype
        )
        inputs_embeds[batch.packed_text_indexes] = self.embed_text(batch.packed_text_ids)
        if batch.packed_vit_token_indexes.numel() > 0:
            inputs_embeds[batch.packed_vit_token_indexes] = self.embed_vit(
                batch.packed_vit_tokens, batch.packed_vit_position_ids, batch.vit_token_seqlens
            )

        # Clean copies have t = 0, so their x_t is exactly x0.
        x_t = add_noise(batch.packed_latent, noise, batch.packed_timesteps)
        if batch.packed_vae_token_indexes.numel() > 0:
            inputs_embeds[batch.packed_vae_token_indexes] = self.embed_latents(
                x_t, batch.packed_timesteps, batch.packed_latent_position_ids
            )
        return inputs_embeds, x_t

    def run_decoder(
        self,
        batch: PackedBatch,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mask: str = "block",
        output_hidden_states: bool = False,
    ) -> tuple[DecoderOutput, torch.Tensor]:
        """Embed the batch, run the decoder and return its output with the noise used for the latents.

        `mask` is "block" (attention per sample) or "dense" (one [T, T] masked attention).
        Both compute the same result.
        """
        if mask not in ("block", "dense"):
            raise ValueError(f"mask={mask!r} is invalid; expected 'block' or 'dense'")
        if noise is None:
            noise = torch.randn(
                batch.packed_latent.shape, generator=generator, dtype=batch.packed_latent.dtype
            ).to(batch.packed_latent.device)
        inputs_embeds, _ = self.embed_packed(batch, noise)
        attention_mask = batch.block_mask() if mask == "block" else batch.dense_mask().to(self.device)
        output = self.language_model(
            inputs_embeds,
            batch.packed_position_ids,
            batch.packed_expert_ids,
            attention_mask,
            output_hidden_states=output_hidden_states,
        )
        return output, noise

    def forward(
        self,
        batch: PackedBatch,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mask: str = "block",
    ) -> BagelOutput:
        """Compute the CE and MSE losses of a packed batch. `noise` [N_vae, p*p*C] defaults to N(0, I)."""
        output, noise = self.run_decoder(batch, noise, generator, mask)
        hidden_states = output.last_hidden_state

        # Next-token CE, summed over the scored tokens and divided by their count.
        logits = self.lm_head(hidden_states[batch.ce_loss_indexes])  # [N_ce, V]
        num_ce = logits.shape[0]
        if num_ce > 0:
            ce_loss = F.cross_entropy(logits.float(), batch.packed_label_ids, reduction="sum") / num_ce
        else:
            ce_loss = hidden_states.sum() * 0.0  # keeps the graph so backward() still works

        # Velocity MSE on noisy latent tokens: mean over channels, then averaged over tokens.
        noisy = batch.packed_latent_noisy
        predicted = self.llm2vae(hidden_states[batch.mse_loss_indexes])  # [N_mse, p*p*C]
        target = velocity_target(batch.packed_latent[noisy], noise[noisy])
        num_mse = predicted.shape[0]
        if num_mse > 0:
            mse_loss = (predicted.float() - target.float()).pow(2).mean(dim=-1).sum() / num_mse
        else:
            mse_loss = hidden_states.sum() * 0.0

        loss = self.config.ce_weight * ce_loss + self.config.mse_weight * mse_loss
        return BagelOutput(
            loss=loss,
            ce_loss=ce_loss,
            mse_loss=mse_loss,
            num_ce_tokens=num_ce,
            num_mse_tokens=num_mse,
            logits=logits,
            predicted_velocity=predicted,
            target_velocity=target,
            last_hidden_state=hidden_states,
        )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: BagelConfig, device: str | torch.device = "meta") -> dict[str, int]:
    """Build the model on `device` (no memory on "meta") and return parameter counts by part.

    BAGEL's "7B active / 14B total" counts the decoder: `llm_active` is one expert plus the
    shared embedding and LM head, `llm_total` adds the other experts. Frozen sin-cos tables
    are buffers and appear only under `frozen_tables`.
    """
    with torch.device(device):
        model = Bagel(config)
    decoder = model.language_model
    shared = _numel(model.embed_tokens) + _numel(model.lm_head)
    per_expert = sum(_numel(layer.experts[0]) for layer in decoder.layers) + _numel(decoder.norm[0])
    counts = {
        "embeddings_and_lm_head": shared,
        "llm_per_expert": per_expert,
        "llm_active": shared + per_expert,
        "llm_total": shared + _numel(decoder),
        "vit": _numel(model.vit),
        "connector": _numel(model.connector),
        "generation_heads": _numel(model.vae2llm) + _numel(model.llm2vae) + _numel(model.time_embedder),
        "frozen_tables": model.connector.pos_embed.table.numel() + model.latent_pos_embed.table.numel(),
    }
    counts["total"] = _numel(model)
    return counts
