"""Building blocks of the Qwen2.5 decoder layer that BAGEL uses: RMSNorm, RoPE, SwiGLU, GQA,
and attention over packed sequences of different lengths."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# Qwen2's and BAGEL's initializer_range for weights created from scratch.
INIT_STD = 0.02


def init_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """Initialise a module created from scratch: normal(0, std) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, cast back, then scaled by a learned weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(dim=-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return self.weight * hidden_states.to(input_dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE table: pair (i, i + d/2) turns at frequency theta^(-2i/d)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return cos and sin of shape [T, head_dim] for 1-D position ids of shape [T]."""
        freqs = position_ids.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [T, d/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, d]: both halves share one frequency
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map [x1, x2] (halves of the last dim) to [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, n_h, d] and k [T, n_kv, d] by the cos/sin [T, d] of their positions."""
    cos = cos[:, None, :].to(q.dtype)  # [T, 1, d], broadcast over heads
    sin = sin[:, None, :].to(q.dtype)
    q_rotated = q * cos + rotate_half(q) * sin
    k_rotated = k * cos + rotate_half(k) * sin
    return q_rotated, k_rotated


def repeat_kv(hidden_states: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Expand [S, n_kv, d] to [S, n_kv * num_groups, d] so that query head j reads KV head j // num_groups."""
    if num_groups == 1:
        return hidden_states
    return hidden_states.repeat_interleave(num_groups, dim=1)


def kv_head_for_query_head(query_head: int, num_groups: int) -> int:
    """Return the KV head that grouped-query attention assigns to a query head."""
    return query_head // num_groups


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


# ---- attention over packed sequences of different lengths --------------------------------------

# Samples whose lengths differ by at most this factor share one padded attention call.
MAX_PADDING_RATIO = 1.25


@dataclass(frozen=True)
class VarlenLayout:
    """Samples of a packed sequence grouped by similar length, each group padded for one batched call.

    ``groups`` lists (index [b, L] into the packed sequence, valid [b, L], mask) per group, where
    the boolean mask is [b, 1, L, L] for per-sample masks and [b, 1, 1, L] (valid keys) without.
    Padding slots gather token 0 and attend to themselves or to valid keys, so their rows stay
    finite. They are dropped afterwards and get no gradient. ``inverse`` [T] gives, for each
    packed token, its row in the concatenated outputs of the groups.
    """

    groups: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]
    inverse: torch.Tensor


def varlen_layout(
    seqlens: list[int], masks: list[torch.Tensor] | None = None, device: torch.device | str = "cpu"
) -> VarlenLayout:
    """Group samples of lengths ``seqlens`` (optional boolean [L_i, L_i] masks) into padded attention calls.

    Longest first, a sample joins the open group while the group's length is at most
    MAX_PADDING_RATIO times its own, so padding adds at most about 56% to its attention cost.
    """
    lengths = torch.tensor(seqlens)
    offsets = (torch.cumsum(lengths, 0) - lengths).tolist()
    order = sorted(range(len(seqlens)), key=lambda i: -seqlens[i])
    members: list[list[int]] = []
    for i in order:
        if members and seqlens[members[-1][0]] <= MAX_PADDING_RATIO * seqlens[i]:
            members[-1].append(i)
        else:
            members.append([i])

    groups, rows = [], []
    for group in members:
        width = seqlens[group[0]]
        slots = torch.arange(width)
        group_lengths = lengths[group]
        valid = slots[None, :] < group_lengths[:, None]  # [b, L]
        index = torch.where(valid, torch.tensor([offsets[i] for i in group])[:, None] + slots[None, :], 0)
        if masks is None:
            mask = valid[:, None, None, :]  # [b, 1, 1, L]: every query attends to the valid keys
        else:
            mask = torch.zeros(len(group), width, width, dtype=torch.bool)
            for row, i in enumerate(group):
                mask[row, : seqlens[i], : seqlens[i]] = masks[i]
            mask = (mask | (torch.eye(width, dtype=torch.bool) & ~valid[:, :, None]))[:, None]
        groups.append((index.to(device), valid.to(device), mask.to(device)))
        rows.append(index[valid])
    positions = torch.cat(rows)  # packed position of each row of the concatenated outputs
    inverse = torch.empty_like(positions)
    inverse[positions] = torch.arange(positions.numel())
    return VarlenLayout(tuple(groups), inverse.to(device))


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    """Compute scaled dot-product attention within each sample of packed q, k, v [T, n, d], giving [T, n, d]."""
    outputs = []
    for index, valid, mask in layout.groups:
        q_b, k_b, v_b = (x[index].transpose(1, 2) for x in (q, k, v))  # [b, n, L, d]
        output = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=mask)  # [b, n, L, d]
        outputs.append(output.transpose(1, 2)[valid])  # [tokens of the group, n, d]
    return torch.cat(outputs)[layout.inverse]
