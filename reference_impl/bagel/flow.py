"""Rectified flow on VAE latents: timestep embedding, sin-cos tables, noising and Euler sampling.

Convention of BAGEL (arXiv 2505.14683): t = 0 is clean data and t = 1 is pure noise,
x_t = (1 - t) x0 + t eps, and the network predicts the velocity v = eps - x0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TIMESTEP_FREQUENCY_DIM = 256


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Shift t in [0, 1] towards noise: s t / (1 + (s - 1) t). s = 1 leaves t unchanged."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    num: int, shift: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw `num` logit-normal timesteps t = shift(sigmoid(n)), n ~ N(0, 1)."""
    logits = torch.randn(num, generator=generator)
    return shift_timesteps(torch.sigmoid(logits), shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Return x_t = (1 - t) x0 + t noise for x0, noise [N, D] and per-token t [N]."""
    t = t[:, None].to(x0.dtype)  # [N, 1]
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Return the flow-matching target eps - x0, which points from data to noise."""
    return noise - x0


def euler_timesteps(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Return the sampling grid: linspace(1, 0, num_steps) shifted by `shift`.

    The sampler makes num_steps - 1 Euler steps, from grid[i] to grid[i + 1].
    """
    if num_steps < 2:
        raise ValueError(f"num_steps={num_steps} must be at least 2 (the grid includes both ends)")
    return shift_timesteps(torch.linspace(1.0, 0.0, num_steps), shift)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Move x from t to t_next < t along the predicted velocity."""
    return x - velocity * (t - t_next)


def timestep_frequencies(t: torch.Tensor, dim: int = TIMESTEP_FREQUENCY_DIM) -> torch.Tensor:
    """Map t [N] to [cos(t phi_i), sin(t phi_i)] of size [N, dim], phi_i = exp(-ln(10000) i / (dim/2)).

    Cosines come first, and t in [0, 1] is used as is, without the x1000 of DDPM codebases.
    """
    half = dim // 2
    phi = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.to(torch.float32)[:, None] * phi[None, :]  # [N, dim/2]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """DiT-style timestep embedding: sinusoidal features, Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = TIMESTEP_FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_frequencies(t, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Return [sin(x w_k), cos(x w_k)] of size [N, dim] with w_k = 10000^(-k / (dim/2))."""
    half = dim // 2
    omega = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [N, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sincos_2d_table(dim: int, grid_size: int) -> torch.Tensor:
    """Return the [grid_size**2, dim] table whose row r * grid_size + c is [S(c), S(r)].

    The first half encodes the column, as in MAE / DiT tables that BAGEL reuses.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos table width {dim} must be divisible by 4")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # [grid_size**2], row-major
    table = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=-1)
    return table.to(torch.float32)


class PositionTable2D(nn.Module):
    """Frozen 2-D sin-cos position embedding indexed by row * grid_size + col."""

    def __init__(self, dim: int, grid_size: int):
        super().__init__()
        self.grid_size = grid_size
        # Not persistent: the table is a fixed function of (dim, grid_size).
        self.register_buffer("table", sincos_2d_table(dim, grid_size), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]
