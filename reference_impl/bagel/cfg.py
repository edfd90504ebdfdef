"""Classifier-free guidance with text and image conditions, and BAGEL's norm rescaling.

Velocities come from three contexts: v_c (full condition), v_t (text dropped: images
only) and v_i (images dropped: text only). Text guidance u = v_t + s_T (v_c - v_t) comes
first, image guidance second, and the result is rescaled so that its norm never exceeds
that of v_c (BAGEL, arXiv 2505.14683).
"""

from __future__ import annotations

import torch

RENORM_TYPES = ("global", "channel", "text_channel")
NORM_EPS = 1e-8


def validate_renorm_type(renorm_type: str) -> None:
    if renorm_type not in RENORM_TYPES:
        raise ValueError(f"cfg_renorm_type={renorm_type!r} is invalid; expected one of {RENORM_TYPES}")


def cfg_active(t: float, cfg_interval: tuple[float, float], cfg_text_scale: float) -> bool:
    """Return whether guidance applies at shifted time t: t in (low, high] and s_T > 1.

    With s_T <= 1 image guidance is skipped as well, even if s_I > 1.
    """
    low, high = cfg_interval
    return cfg_text_scale > 1.0 and low < float(t) <= high


def needs_image_uncond(cfg_img_scale: float, renorm_type: str) -> bool:
    """Return whether `combine_cfg` reads v_i for these settings."""
    if renorm_type == "text_channel":
        return cfg_img_scale != 1.0
    return cfg_img_scale > 1.0


def _rescale(value: torch.Tensor, reference: torch.Tensor, renorm_min: float, per_token: bool) -> torch.Tensor:
    """Scale `value` by clamp(|reference| / (|value| + eps), renorm_min, 1), per token [N, D] or globally."""
    if per_token:
        ratio = reference.norm(dim=-1, keepdim=True) / (value.norm(dim=-1, keepdim=True) + NORM_EPS)
    else:
        ratio = reference.norm() / (value.norm() + NORM_EPS)
    return value * ratio.clamp(min=renorm_min, max=1.0)


def combine_cfg(
    v_cond: torch.Tensor,
    v_text_uncond: torch.Tensor,
    v_img_uncond: torch.Tensor | None,
    cfg_text_scale: float,
    cfg_img_scale: float,
    renorm_type: str = "global",
    renorm_min: float = 0.0,
) -> torch.Tensor:
    """Combine the three velocities [N, D] into the guided velocity.

    - global / channel: w = v_i + s_I (u - v_i) if s_I > 1 else u, then w is rescaled
      against v_c with one norm over the whole tensor (global) or one per token (channel).
    - text_channel: u is rescaled per token against v_c first, then
      v = v_i + s_I (u - v_i) with no further rescaling.
    `v_img_uncond` may be None when `needs_image_uncond` is False.
    """
    validate_renorm_type(renorm_type)
    if v_img_uncond is None and needs_image_uncond(cfg_img_scale, renorm_type):
        raise ValueError(f"cfg_img_scale={cfg_img_scale} with {renorm_type!r} needs v_img_uncond")

    guided_text = v_text_uncond + cfg_text_scale * (v_cond - v_text_uncond)

    if renorm_type == "text_channel":
        guided_text = _rescale(guided_text, v_cond, renorm_min, per_token=True)
        if v_img_uncond is None:
            return guided_text
        return v_img_uncond + cfg_img_scale * (guided_text - v_img_uncond)

    if cfg_img_scale > 1.0:
        guided = v_img_uncond + cfg_img_scale * (guided_text - v_img_uncond)
    else:
        guided = guided_text
    return _rescale(guided, v_cond, renorm_min, per_token=renorm_type == "channel")
