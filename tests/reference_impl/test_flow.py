"""Rectified-flow maths, sampling grid, timestep embedding and sin-cos tables."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impl.bagel.flow import (
    add_noise,
    euler_step,
    euler_timesteps,
    sample_timesteps,
    shift_timesteps,
    sincos_2d_table,
    timestep_frequencies,
    velocity_target,
)
from reference_impl.bagel.packing import SequenceItem, pack_samples


def test_xt_endpoints():
    x0, noise = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(add_noise(x0, noise, torch.zeros(4)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(4)), noise)
    torch.testing.assert_close(add_noise(x0, noise, torch.full((4,), 0.25)), 0.75 * x0 + 0.25 * noise)


def test_velocity_target_direction():
    x0, noise = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(velocity_target(x0, noise), noise - x0)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 4.0])
def test_oracle_euler_reaches_x0(shift):
    torch.manual_seed(0)
    x0 = torch.randn(6, 16)
    x = torch.randn(6, 16)  # x at t = 1 is pure noise
    grid = euler_timesteps(10, shift).tolist()
    for t, t_next in zip(grid[:-1], grid[1:]):
        oracle = (x - x0) / t  # the exact velocity for a single data point
        x = euler_step(x, oracle, t, t_next)
    assert (x - x0).abs().max() < 1e-5


def test_grid_endpoints_and_steps():
    grid = euler_timesteps(50, 3.0)
    assert grid.shape == (50,)
    assert grid[0].item() == 1.0
    assert grid[-1].item() == 0.0
    assert bool((grid[1:] < grid[:-1]).all())
    steps = grid[:-1] - grid[1:]  # 49 Euler steps
    assert steps.shape == (49,)
    assert abs(steps.sum().item() - 1.0) < 1e-6


def test_shift_formula():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(shift_timesteps(t, 3.0), 3 * t / (1 + 2 * t))
    assert torch.equal(shift_timesteps(t, 1.0), t)


def test_sample_timesteps_logit_normal():
    drawn = sample_timesteps(5, 2.0, torch.Generator().manual_seed(7))
    t0 = torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(drawn, 2 * t0 / (1 + t0))


def test_timestep_embedding_cos_first():
    t = torch.tensor([0.0, 0.5])
    features = timestep_frequencies(t)
    assert features.shape == (2, 256)
    phi = torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
    torch.testing.assert_close(features[1, :128], torch.cos(0.5 * phi))  # t is not scaled by 1000
    torch.testing.assert_close(features[1, 128:], torch.sin(0.5 * phi))
    assert torch.equal(features[0, :128], torch.ones(128))


def test_sincos_table_layout():
    dim, side = 16, 4
    table = sincos_2d_table(dim, side)
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    row, col = 1, 3
    entry = table[row * side + col].double()
    torch.testing.assert_close(entry[:4], torch.sin(col * omega))  # column first, sin before cos
    torch.testing.assert_close(entry[4:8], torch.cos(col * omega))
    torch.testing.assert_close(entry[8:12], torch.sin(row * omega))
    torch.testing.assert_close(entry[12:], torch.cos(row * omega))


def test_initial_mse_zero_head(make_model, config):
    model = make_model(randomize_generation=False)
    latent = torch.randn(config.latent_channels, 8, 8)
    sample = [SequenceItem("text", text_ids=[1]), SequenceItem("vae_image", latent=latent, loss=True, timestep=0.6)]
    batch = pack_samples([sample], config)
    noise = torch.randn(batch.packed_latent.shape)
    output = model(batch, noise=noise)
    expected = ((noise - batch.packed_latent) ** 2).mean(dim=-1).mean()
    assert torch.count_nonzero(output.predicted_velocity) == 0
    torch.testing.assert_close(output.mse_loss, expected)
