"""Shared fixtures: the tiny configuration and seeded models in float32."""

from __future__ import annotations

import pytest
import torch

from reference_impl.bagel.config import get_preset
from reference_impl.bagel.model import Bagel

# The tiny model's matrices are too small to gain from intra-op threads, and on a busy
# machine spinning OpenMP threads made one forward pass 20x slower.
torch.set_num_threads(1)


@torch.no_grad()
def _randomize_generation_path(model: Bagel, scale: float = 0.02) -> None:
    """Make the generation expert differ from the understanding expert and give llm2vae weights.

    Right after init both experts are equal and llm2vae is zero, which would hide routing
    and velocity mistakes from the equivalence tests.
    """
    gen = model.config.llm.expert_index("vae")
    for layer in model.language_model.layers:
        for param in layer.experts[gen].parameters():
            param.add_(torch.randn_like(param) * scale)
    model.language_model.norm[gen].weight.add_(torch.randn_like(model.language_model.norm[gen].weight) * 0.1)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    torch.nn.init.normal_(model.llm2vae.bias, std=0.02)


@pytest.fixture
def config():
    return get_preset("tiny")


@pytest.fixture
def make_model(config):
    def build(seed: int = 0, randomize_generation: bool = True, cfg=None) -> Bagel:
        torch.manual_seed(seed)
        model = Bagel(cfg or config).eval()
        if randomize_generation:
            _randomize_generation_path(model)
        return model

    return build


@pytest.fixture
def model(make_model):
    return make_model()
