"""Mixture-of-Transformers routing, expert copy init, isolation and configuration checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reference_impl.bagel.config import BagelConfig, LLMConfig, ViTConfig, get_preset
from reference_impl.bagel.model import Bagel, count_parameters
from reference_impl.bagel.mot import MoTDecoder
from reference_impl.bagel.packing import SequenceItem, pack_samples


def _decoders(seed: int = 0) -> tuple[MoTDecoder, MoTDecoder]:
    """Return a 2-expert MoT decoder after copy init and a dense decoder with the same weights."""
    torch.manual_seed(seed)
    mot = MoTDecoder(LLMConfig())
    for param in mot.parameters():
        torch.nn.init.normal_(param, std=0.05)
    mot.init_experts_from(0)
    dense = MoTDecoder(LLMConfig(layer_type="dense"))
    dense.load_state_dict(mot.state_dict(), strict=False)  # experts.1 / norm.1 have no dense twin
    return mot, dense


def test_copy_init_equal_weights():
    mot, _ = _decoders()
    for und, gen in zip(mot.layers[0].experts[0].parameters(), mot.layers[0].experts[1].parameters(), strict=True):
        assert torch.equal(und, gen)
    assert torch.equal(mot.norm[0].weight, mot.norm[1].weight)


def test_mot_equals_dense_any_routing():
    mot, dense = _decoders()
    x = torch.randn(12, 128)
    position_ids = torch.arange(12)
    mask = torch.ones(12, 12, dtype=torch.bool).tril()
    for seed in range(3):
        expert_ids = torch.randint(0, 2, (12,), generator=torch.Generator().manual_seed(seed))
        ours = mot(x, position_ids, expert_ids, mask).last_hidden_state
        reference = dense(x, position_ids, torch.zeros(12, dtype=torch.long), mask).last_hidden_state
        assert (ours - reference).abs().max() < 1e-5


def test_und_only_batch_equals_dense():
    mot, dense = _decoders()
    with torch.no_grad():
        for param in mot.layers[1].experts[1].parameters():
            param.add_(1.0)  # unused when every token is routed to expert 0
    x = torch.randn(6, 128)
    zeros = torch.zeros(6, dtype=torch.long)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    ours = mot(x, torch.arange(6), zeros, mask).last_hidden_state
    reference = dense(x, torch.arange(6), zeros, mask).last_hidden_state
    assert torch.equal(ours, reference)


def _isolation_batch(config: BagelConfig):
    # Sample 0: text, noisy VAE, text (cannot see the noise). Sample 1: text, clean VAE, text.
    latent = torch.randn(config.latent_channels, 4, 4)
    samples = [
        [SequenceItem("text", text_ids=[1, 2]), SequenceItem("vae_image", latent=latent, loss=True, timestep=0.5),
         SequenceItem("text", text_ids=[3], loss=True)],
        [SequenceItem("text", text_ids=[4]), SequenceItem("vae_image", latent=latent),
         SequenceItem("text", text_ids=[5], loss=True)],
    ]
    return pack_samples(samples, config)


def test_gen_perturbation_isolation(make_model, config):
    model = make_model(randomize_generation=False)
    batch = _isolation_batch(config)
    noise = torch.randn(batch.packed_latent.shape)
    before = model(batch, noise=noise).last_hidden_state
    with torch.no_grad():
        for layer in model.language_model.layers:
            for param in layer.experts[1].parameters():
                param.add_(torch.randn_like(param) * 0.05)
    after = model(batch, noise=noise).last_hidden_state

    # Sample 0 is 4 text + (1 + 4 + 1) noisy block + 3 text, so sample 1 starts at 13.
    sees_no_latent = torch.zeros(batch.sequence_length, dtype=torch.bool)
    sees_no_latent[0:4] = True  # text before the noisy block
    sees_no_latent[10:13] = True  # text after a noise split cannot see it
    sees_no_latent[13:16] = True  # sample 1 text before the clean block
    assert torch.equal(before[sees_no_latent], after[sees_no_latent])
    assert not torch.allclose(before[5:9], after[5:9])  # noisy latents use the generation expert
    assert not torch.allclose(before[17:], after[17:])  # tokens that see the clean latents


def test_third_expert_by_config():
    llm = LLMConfig(experts=("und", "gen", "brain"), modality_to_expert={"text": "und", "vit": "brain", "vae": "gen"})
    config = BagelConfig(llm=llm)
    torch.manual_seed(0)
    model = Bagel(config).eval()
    assert len(model.language_model.layers[0].experts) == 3
    assert config.llm.expert_index("vit") == 2
    image = torch.rand(3, 16, 16) * 2 - 1
    batch = pack_samples([[SequenceItem("text", text_ids=[1]), SequenceItem("vit_image", image=image)]], config)
    assert batch.packed_expert_ids.tolist() == [0, 0, 0, 0, 2, 2, 2, 2, 0]

    before = model(batch).last_hidden_state
    with torch.no_grad():
        for param in model.language_model.layers[0].experts[2].parameters():
            param.add_(0.1)
    after = model(batch).last_hidden_state
    assert torch.equal(before[:3], after[:3])  # text before the ViT block
    assert not torch.allclose(before[4:8], after[4:8])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 130}, "not divisible by num_attention_heads"),
        ({"num_key_value_heads": 3}, "not divisible by num_key_value_heads"),
        ({"head_dim": 31}, "even"),
        ({"modality_to_expert": {"text": "und", "vit": "und", "vae": "omics"}}, "'omics' is not an expert"),
        ({"modality_to_expert": {"text": "und", "vit": "und"}}, "no expert for ['vae']"),
        ({"layer_type": "moe"}, "layer_type='moe'"),
        ({"experts": ("und", "und")}, "duplicate"),
    ],
)
def test_llm_config_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        LLMConfig(**kwargs)
    assert message in str(error.value)


def test_other_config_errors():
    with pytest.raises(ValueError, match="select_layer"):
        ViTConfig(select_layer=-5)
    with pytest.raises(ValueError, match="latent_channels"):
        BagelConfig(latent_channels=0)
    with pytest.raises(ValueError, match="valid presets: tiny, bagel-7b-mot"):
        get_preset("bagel-13b")


def test_preset_override_and_roundtrip():
    config = get_preset("tiny", latent_channels=48)
    assert config.latent_token_dim == 192
    assert BagelConfig.from_dict(config.to_dict()) == config
    assert dataclasses.replace(config, ce_weight=0.25).ce_weight == 0.25


def test_parameter_counts_7b():
    counts = count_parameters(get_preset("bagel-7b-mot"))
    assert round(counts["llm_active"] / 1e9, 2) == 7.62
    assert round(counts["llm_total"] / 1e9, 2) == 14.14
    assert round(counts["vit"] / 1e6) == 403
    assert round(counts["connector"] / 1e6) == 17
    assert round(counts["generation_heads"] / 1e6) == 14
