"""Classifier-free guidance formulas, renorm types and the interval gate."""

from __future__ import annotations

import pytest
import torch

from reference_impl.bagel.cfg import cfg_active, combine_cfg
from reference_impl.bagel.inference import (
    CFGContexts,
    SamplerSettings,
    build_cfg_contexts,
    sample_latent_tokens,
)


@pytest.fixture
def velocities():
    torch.manual_seed(0)
    return torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 16)


@pytest.mark.parametrize("renorm_type", ["global", "channel", "text_channel"])
def test_unit_scales_give_cond(velocities, renorm_type):
    v_c, v_t, v_i = velocities
    torch.testing.assert_close(combine_cfg(v_c, v_t, v_i, 1.0, 1.0, renorm_type), v_c)


def test_renorm_min_one_disables_renorm(velocities):
    v_c, v_t, v_i = velocities
    u = v_t + 4.0 * (v_c - v_t)
    expected = v_i + 2.0 * (u - v_i)
    torch.testing.assert_close(combine_cfg(v_c, v_t, v_i, 4.0, 2.0, "global", renorm_min=1.0), expected)


def test_global_norm_bounded(velocities):
    v_c, v_t, v_i = velocities
    guided = combine_cfg(v_c, v_t, v_i, 6.0, 2.0, "global")
    assert guided.norm() <= v_c.norm() * (1 + 1e-6)


def test_global_hand_formula(velocities):
    v_c, v_t, v_i = velocities
    u = v_t + 4.0 * (v_c - v_t)
    w = v_i + 1.5 * (u - v_i)
    ratio = min(max((v_c.norm() / (w.norm() + 1e-8)).item(), 0.2), 1.0)
    torch.testing.assert_close(combine_cfg(v_c, v_t, v_i, 4.0, 1.5, "global", 0.2), ratio * w)


def test_channel_hand_formula(velocities):
    v_c, v_t, v_i = velocities
    u = v_t + 3.0 * (v_c - v_t)
    w = v_i + 2.0 * (u - v_i)
    expected = torch.stack([
        w[n] * min(max((v_c[n].norm() / (w[n].norm() + 1e-8)).item(), 0.0), 1.0) for n in range(6)
    ])
    torch.testing.assert_close(combine_cfg(v_c, v_t, v_i, 3.0, 2.0, "channel"), expected)


def test_text_channel_hand_formula(velocities):
    v_c, v_t, v_i = velocities
    u = v_t + 4.0 * (v_c - v_t)
    u_renormed = torch.stack([
        u[n] * min(max((v_c[n].norm() / (u[n].norm() + 1e-8)).item(), 0.0), 1.0) for n in range(6)
    ])
    expected = v_i + 2.0 * (u_renormed - v_i)  # no renorm after image guidance
    torch.testing.assert_close(combine_cfg(v_c, v_t, v_i, 4.0, 2.0, "text_channel"), expected)


def test_image_scale_one_skips_image_branch(velocities):
    v_c, v_t, _ = velocities
    u = v_t + 4.0 * (v_c - v_t)
    ratio = min((v_c.norm() / (u.norm() + 1e-8)).item(), 1.0)
    torch.testing.assert_close(combine_cfg(v_c, v_t, None, 4.0, 1.0, "global"), ratio * u)


def test_unknown_renorm_type(velocities):
    v_c, v_t, v_i = velocities
    with pytest.raises(ValueError, match="local"):
        combine_cfg(v_c, v_t, v_i, 4.0, 1.0, "local")


def test_interval_gate_open_below():
    assert not cfg_active(0.4, (0.4, 1.0), 4.0)
    assert cfg_active(0.4001, (0.4, 1.0), 4.0)
    assert cfg_active(1.0, (0.4, 1.0), 4.0)
    assert not cfg_active(0.0, (0.0, 1.0), 4.0)


def test_text_scale_one_disables_cfg():
    assert not cfg_active(0.9, (0.0, 1.0), 1.0)
    assert not cfg_active(0.9, (0.0, 1.0), 0.5)


def test_t2i_effective_scale(velocities):
    v_c, v_t, _ = velocities
    # Without an input image the image-unconditional context equals the conditional one.
    guided = combine_cfg(v_c, v_t, v_c, 3.0, 1.5, "global", renorm_min=1.0)
    torch.testing.assert_close(guided, v_t + (1 + 1.5 * (3.0 - 1)) * (v_c - v_t))


def test_sampler_text_scale_one_ignores_image_cfg(model):
    cond = build_cfg_contexts(model, [("text", [1, 2, 3])])
    # Uncond contexts that would change the result if they were used.
    other = build_cfg_contexts(model, [("text", [9, 9])]).cond
    contexts = CFGContexts(cond.cond, other, other)
    guided = SamplerSettings(steps=4, cfg_text_scale=1.0, cfg_img_scale=3.0, cfg_interval=(0.0, 1.0))
    plain = SamplerSettings(steps=4, cfg_text_scale=1.0, cfg_img_scale=1.0, cfg_interval=(0.0, 1.0))
    x_guided = sample_latent_tokens(model, [contexts], 2, 2, guided, torch.Generator().manual_seed(0))
    same = CFGContexts(cond.cond, cond.cond, cond.cond)
    x_plain = sample_latent_tokens(model, [same], 2, 2, plain, torch.Generator().manual_seed(0))
    assert torch.equal(x_guided, x_plain)
