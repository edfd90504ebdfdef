"""Mixture-of-Transformers decoder: per-expert weights, one shared attention over the packed sequence.

In BAGEL (arXiv 2505.14683) every parameter of a decoder layer (q/k/v/o projections,
QK-Norms, both RMSNorms, the MLP) and the final norm exist once per expert. Routing is
hard and decided by token type: each token uses its own expert's weights, but attention
runs once over all tokens, so tokens attend across experts freely. With one expert this
is the dense Qwen2.5 decoder layer with QK-Norm.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torch.nn import functional as F

from .config import LLMConfig
from .layers import (
    MLP,
    RMSNorm,
    RotaryEmbedding,
    VarlenLayout,
    apply_rotary_pos_emb,
    repeat_kv,
    varlen_attention,
    varlen_layout,
)

Rows = slice | torch.Tensor


@dataclass
class BlockAttentionMask:
    """Per-sample masks of a packed sequence, so attention runs within each sample only.

    `masks[i]` is a boolean [L_i, L_i] table (True = query may attend to key) for the
    i-th sample of length `sample_lens[i]`. Tokens of different samples never attend to
    each other, which is what the dense mask of the whole packed sequence also encodes.
    """

    sample_lens: list[int]
    masks: list[torch.Tensor]

    def to_dense(self) -> torch.Tensor:
        """Return the equivalent boolean [T, T] mask of the packed sequence."""
        return torch.block_diag(*self.masks).bool()

    @cached_property
    def layout(self) -> VarlenLayout:
        """Grouping of the samples into padded attention calls, built once and shared by all layers."""
        return varlen_layout(self.sample_lens, self.masks)


AttentionMask = torch.Tensor | BlockAttentionMask | None


@dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values [S, n_kv, d] of a context, keys stored after QK-Norm and RoPE.

    The cache is immutable: `extend` returns a new cache, so an older one is a valid snapshot
    (used for the text-unconditional CFG context).
    """

    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    def __len__(self) -> int:
        return self.key_values[0][0].shape[0] if self.key_values else 0

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.key_values[layer_idx] if self.key_values else None

    def extend(self, new_key_values: list[tuple[torch.Tensor, torch.Tensor]]) -> KVCache:
        if not self.key_values:
            return KVCache(tuple((k.detach(), v.detach()) for k, v in new_key_values))
        merged = tuple(
            (torch.cat([old_k, k.detach()]), torch.cat([old_v, v.detach()]))
            for (old_k, old_v), (k, v) in zip(self.key_values, new_key_values, strict=True)
        )
        return KVCache(merged)


def expert_groups(expert_ids: torch.Tensor, num_experts: int) -> Iterator[tuple[int, Rows]]:
    """Yield (expert, rows) for every expert that owns tokens. Rows is a full slice when one expert owns all."""
    if num_experts == 1:
        yield 0, slice(None)
        return
    for expert in range(num_experts):
        rows = (expert_ids == expert).nonzero(as_tuple=True)[0]
        if rows.numel() == expert_ids.numel():
            yield expert, slice(None)
            return
        if rows.numel() > 0:
            yield expert, rows


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: AttentionMask
) -> torch.Tensor:
    """Scaled dot-product attention of q [T, n_h, d] over k, v [S, n_kv, d], returning [T, n_h * d].

    `attention_mask` is a boolean (True = attend) or additive float [T, S] mask, a
    BlockAttentionMask (requires S == T), or None for full attention.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_groups = num_heads // k.shape[1]
    k = repeat_kv(k, num_groups)  # [S, n_h, d]
    v = repeat_kv(v, num_groups)

    if isinstance(attention_mask, BlockAttentionMask):
        layout = attention_mask.layout
        if layout.inverse.device != q.device:
            layout = varlen_layout(attention_mask.sample_lens, attention_mask.masks, q.device)
        output = varlen_attention(q, k, v, layout)  # [T, n_h, d]
    else:
        output = _sdpa(q, k, v, attention_mask)
    return output.reshape(num_tokens, num_heads * head_dim)  # [T, n_h * d]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    q = q.transpose(0, 1)[None]  # [1, n_h, T, d]
    k = k.transpose(0, 1)[None]  # [1, n_h, S, d]
    v = v.transpose(0, 1)[None]
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [1, n_h, T, d]
    return output[0].transpose(0, 1)  # [T, n_h, d]


class Attention(nn.Module):
    """One expert's attention weights: q/k/v with bias, o without bias, QK-Norm per head."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project [N, H] to q [N, n_h, d], k and v [N, n_kv, d], with QK-Norm after the bias and before RoPE."""
        num_tokens = hidden_states.shape[0]
        q = self.q_proj(hidden_states).view(num_tokens, self.num_heads, self.head_dim)  # [N, n_h, d]
        k = self.k_proj(hidden_states).view(num_tokens, self.num_key_value_heads, self.head_dim)  # [N, n_kv, d]
        v = self.v_proj(hidden_states).view(num_tokens, self.num_key_value_heads, self.head_dim)
        return self.q_norm(q), self.k_norm(k), v


class ExpertLayer(nn.Module):
    """All weights of one decoder layer for one expert."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)


class MoTDecoderLayer(nn.Module):
    """Pre-norm decoder layer whose weights are chosen per token by `expert_ids`."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.experts = nn.ModuleList(ExpertLayer(config) for _ in range(config.num_experts))

    def forward(
        self,
        hidden_states: torch.Tensor,
        expert_ids: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: AttentionMask,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Return the new hidden states [T, H] and this chunk's keys and values (after QK-Norm and RoPE)."""
        num_tokens = hidden_states.shape[0]
        groups = list(expert_groups(expert_ids, len(self.experts)))
        residual = hidden_states

        # Each token's own expert normalises and projects it to q, k and v.
        q = hidden_states.new_empty(num_tokens, self.num_heads, self.head_dim)  # [T, n_h, d]
        k = hidden_states.new_empty(num_tokens, self.num_key_value_heads, self.head_dim)  # [T, n_kv, d]
        v = hidden_states.new_empty(num_tokens, self.num_key_value_heads, self.head_dim)
        for expert, rows in groups:
            layer = self.experts[expert]
            q[rows], k[rows], v[rows] = layer.self_attn.project_qkv(layer.input_layernorm(hidden_states[rows]))

        # RoPE over the whole packed sequence with 1-D position ids.
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)

        # One attention over every token of every expert, after any cached context.
        if past_key_value is not None:
            keys = torch.cat([past_key_value[0], k])  # [S_past + T, n_kv, d]
            values = torch.cat([past_key_value[1], v])
        else:
            keys, values = k, v
        attn_output = packed_attention(q, keys, values, attention_mask)  # [T, n_h * d]

        # Per-expert output projection, residual, post-attention norm and MLP.
        output = torch.empty_like(hidden_states)
        for expert, rows in groups:
            layer = self.experts[expert]
            hidden = residual[rows] + layer.self_attn.o_proj(attn_output[rows])
            output[rows] = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return output, (k, v)


@dataclass
class DecoderOutput:
    last_hidden_state: torch.Tensor
    # Input embeddings, then the output of each layer. The last entry is after the final norm.
    hidden_states: tuple[torch.Tensor, ...] | None
    # This call's keys and values per layer, to extend a KVCache with.
    key_values: list[tuple[torch.Tensor, torch.Tensor]]


class MoTDecoder(nn.Module):
    """Stack of MoT decoder layers with a per-expert final RMSNorm, without embedding or head."""

    def __init__(self, config: LLMConfig):
        super().__init__()
        self.config = config
        self.num_experts = config.num_experts
        self.layers = nn.ModuleList(MoTDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.ModuleList(
            RMSNorm(config.hidden_size, eps=config.rms_norm_eps) for _ in range(self.num_experts)
        )
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)

    @torch.no_grad()
    def init_experts_from(self, source: int = 0) -> None:
        """Copy expert `source` (the understanding expert) into every other expert.

        BAGEL initialises the generation expert this way, so an initialised MoT model
        computes exactly what the dense model computes.
        """
        twins = [(layer.experts, layer.experts[source]) for layer in self.layers]
        twins.append((self.norm, self.norm[source]))
        for experts, source_module in twins:
            for expert, module in enumerate(experts):
                if expert == source:
                    continue
                for param, source_param in zip(module.parameters(), source_module.parameters(), strict=True):
                    param.copy_(source_param)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        expert_ids: torch.Tensor,
        attention_mask: AttentionMask = None,
        past_key_values: KVCache | None = None,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """Run the decoder on a packed sequence [T, H].

        With `past_key_values`, `attention_mask` must be None or cover [T, len(cache) + T].
        """
        if expert_ids.numel() and int(expert_ids.max()) >= self.num_experts:
            raise ValueError(
                f"expert id {int(expert_ids.max())} is out of range for {self.num_experts} expert(s)"
            )
        if past_key_values is not None and isinstance(attention_mask, BlockAttentionMask):
            raise ValueError("a BlockAttentionMask cannot be combined with a KV cache; pass a dense mask")

        position_embeddings = self.rotary_emb(position_ids)
        hidden_states = inputs_embeds
        all_hidden_states = [hidden_states] if output_hidden_states else None
        key_values = []
        for layer_idx, layer in enumerate(self.layers):
            past = past_key_values.layer(layer_idx) if past_key_values is not None else None
            hidden_states, layer_key_value = layer(
                hidden_states, expert_ids, position_embeddings, attention_mask, past
            )
            key_values.append(layer_key_value)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)

        # Final norm, again per expert.
        normed = torch.empty_like(hidden_states)
        for expert, rows in expert_groups(expert_ids, self.num_experts):
            normed[rows] = self.norm[expert](hidden_states[rows])
        if output_hidden_states:
            all_hidden_states[-1] = normed
        return DecoderOutput(
            last_hidden_state=normed,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            key_values=key_values,
        )
