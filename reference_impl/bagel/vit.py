"""SigLIP-style vision encoder with NaViT packing, and the connector into the decoder.

Images of different sizes are patchified, concatenated into one token sequence and
encoded with block-diagonal, non-causal attention, one block per image (NaViT).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import ViTConfig
from .flow import PositionTable2D
from .layers import varlen_attention, varlen_layout


class VisionAttention(nn.Module):
    """Multi-head self-attention with biases, within each packed image."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, hidden, bias=True)
        self.k_proj = nn.Linear(hidden, hidden, bias=True)
        self.v_proj = nn.Linear(hidden, hidden, bias=True)
        self.out_proj = nn.Linear(hidden, hidden, bias=True)

    def forward(self, hidden_states: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        num_tokens, hidden = hidden_states.shape
        q = self.q_proj(hidden_states).view(num_tokens, self.num_heads, self.head_dim)  # [N, n, d]
        k = self.k_proj(hidden_states).view(num_tokens, self.num_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(num_tokens, self.num_heads, self.head_dim)

        # Block-diagonal attention: every image attends only to its own patches.
        layout = varlen_layout(seqlens, device=hidden_states.device)
        attn_output = varlen_attention(q, k, v, layout).reshape(num_tokens, hidden)  # [N, n * d]
        return self.out_proj(attn_output)


class VisionMLP(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden_states), approximate="tanh"))


class VisionEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, hidden_states: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), seqlens)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class VisionTransformer(nn.Module):
    """Linear patch embedding, learned absolute positions, pre-LN blocks and a post-LayerNorm.

    Only the first num_hidden_layers + select_layer + 1 blocks are built: BAGEL drops the
    last SigLIP block (select_layer = -2) but keeps the post-LayerNorm.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        # NOTE: to load a pretrained SigLIP Conv2d patch embedding, permute its weight
        # [W, C, py, px] to [W, py, px, C] and flatten, matching the (py, px, channel) patch order.
        self.patch_embedding = nn.Linear(3 * config.patch_size**2, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_patches_per_side**2, config.hidden_size)
        self.layers = nn.ModuleList(VisionEncoderLayer(config) for _ in range(config.num_used_layers))
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, packed_pixel_patches: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        """Encode patches [N, 3 P^2] of several images (lengths `seqlens`) to [N, width]."""
        hidden_states = self.patch_embedding(packed_pixel_patches) + self.position_embedding(position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, seqlens)
        return self.post_layernorm(hidden_states)


class VisionConnector(nn.Module):
    """Map ViT features into the decoder: Linear, gelu-tanh, Linear, plus a frozen 2-D sin-cos table."""

    def __init__(self, vit_hidden_size: int, hidden_size: int, max_patches_per_side: int):
        super().__init__()
        self.fc1 = nn.Linear(vit_hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.pos_embed = PositionTable2D(hidden_size, max_patches_per_side)

    def forward(self, vit_features: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc2(F.gelu(self.fc1(vit_features), approximate="tanh"))
        return hidden_states + self.pos_embed(position_ids).to(hidden_states.dtype)
