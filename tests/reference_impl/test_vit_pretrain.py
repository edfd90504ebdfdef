"""ViT pretraining: the sigmoid loss by hand, BAGEL-style loading, a short run learns."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impl.bagel.config import ViTConfig, get_preset
from reference_impl.bagel.data import IMAGE_SIZES, sample_spec
from reference_impl.bagel.model import Bagel
from reference_impl.bagel.packing import grid_position_ids, patchify
from reference_impl.bagel.train import DistributedContext, TrainConfig, prepare_vision_encoder
from reference_impl.bagel.vit import VisionTransformer
from reference_impl.bagel.vit_pretrain import (
    ContrastiveTowers,
    PretrainConfig,
    encoder_weights,
    full_encoder_config,
    pretrain_vision_encoder,
    sigmoid_loss,
)


def test_sigmoid_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    log_temperature, bias = torch.tensor(math.log(2.0)), torch.tensor(-0.5)
    # Pairs 0-1 and 1-0 share a caption, so they are positive like the diagonal.
    positives = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])

    expected = 0.0
    for i in range(3):
        for j in range(3):
            logit = 2.0 * float(image[i] @ text[j]) - 0.5
            sign = 1.0 if positives[i, j] else -1.0
            expected -= math.log(1.0 / (1.0 + math.exp(-sign * logit)))
    expected /= 3

    loss = sigmoid_loss(image, text, log_temperature, bias, positives)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_towers_start_with_siglip_temperature_and_bias():
    towers = ContrastiveTowers(ViTConfig())
    assert towers.log_temperature.exp().item() == pytest.approx(10.0)
    assert towers.bias.item() == -10.0
    assert len(towers.encoder.layers) == ViTConfig().num_hidden_layers


def test_encoder_weights_drop_last_block_keep_post_layernorm():
    config = ViTConfig(num_hidden_layers=3, select_layer=-2)
    torch.manual_seed(0)
    full = VisionTransformer(full_encoder_config(config))
    for param in full.parameters():  # non-trivial LayerNorm weights and biases too
        torch.nn.init.normal_(param, std=0.1)
    weights = encoder_weights(full, config)
    assert not any(name.startswith("layers.2.") for name in weights)
    assert "post_layernorm.weight" in weights

    loaded = VisionTransformer(config)
    loaded.load_state_dict(weights)  # strict: every key of the truncated encoder is present

    images = [sample_spec(torch.Generator().manual_seed(i), image_size=hw).render() for i, hw in enumerate(IMAGE_SIZES)]
    patches = torch.cat([patchify(image, config.patch_size) for image in images])
    seqlens = [(h // config.patch_size) * (w // config.patch_size) for h, w in IMAGE_SIZES]
    position_ids = torch.cat(
        [grid_position_ids(h // config.patch_size, w // config.patch_size, config.max_patches_per_side) for h, w in IMAGE_SIZES]
    )

    # By hand: the full encoder's first two blocks, then its post-LayerNorm.
    hidden = full.patch_embedding(patches) + full.position_embedding(position_ids)
    for layer in full.layers[:2]:
        hidden = layer(hidden, seqlens)
    expected = full.post_layernorm(hidden)

    torch.testing.assert_close(loaded(patches, position_ids, seqlens), expected, rtol=0, atol=0)


def test_short_pretraining_lowers_loss():
    result = pretrain_vision_encoder(ViTConfig(initializer_range=0.1), PretrainConfig(steps=80, batch_size=4), num_eval_images=24)
    losses = result.losses
    assert len(losses) == 80
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert 0.0 <= result.zero_shot_accuracy <= 1.0
    assert not any(p.requires_grad for p in result.encoder.parameters())


def test_prepare_vision_encoder_gives_loadable_weights():
    model_config = get_preset("tiny")
    config = TrainConfig(vit_pretrain=PretrainConfig(steps=2, batch_size=1))
    weights, result = prepare_vision_encoder(config, model_config, DistributedContext())
    assert weights.keys() == encoder_weights(result.encoder, model_config.vit).keys()
    model = Bagel(model_config)
    model.vit.load_state_dict(weights)
    for name, tensor in model.vit.state_dict().items():
        assert torch.equal(tensor, result.encoder.state_dict()[name]), name


def test_prepare_vision_encoder_skips_zero_steps():
    config = TrainConfig(vit_pretrain=PretrainConfig(steps=0))
    assert prepare_vision_encoder(config, get_preset("tiny"), DistributedContext()) == (None, None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", -1, "steps must be >= 0"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("lr", 0.0, "lr must be a positive finite number"),
        ("lr", float("nan"), "lr must be a positive finite number"),
    ],
)
def test_pretrain_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**{field: value})


def test_train_config_reads_pretraining_from_dict():
    config = TrainConfig(vit_pretrain={"steps": 7, "lr": 1e-3})
    assert config.vit_pretrain == PretrainConfig(steps=7, lr=1e-3)
