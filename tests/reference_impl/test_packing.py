"""Packed layout: mask table, position ids, labels, timesteps, packed = per-sample, noise invisibility."""

from __future__ import annotations

import pytest
import torch

from reference_impl.bagel.packing import (
    SequenceItem,
    grid_position_ids,
    pack_samples,
    patchify,
    unpatchify,
)
from reference_impl.bagel.tokenizer import BOS_ID, EOS_ID, VISION_END_ID, VISION_START_ID


def _image(height: int = 8, width: int = 8) -> torch.Tensor:
    return torch.rand(3, height, width) * 2 - 1


def _latent(config, size: int = 2) -> torch.Tensor:
    return torch.randn(config.latent_channels, size, size)


def _mixed_sample(config) -> list[SequenceItem]:
    # Every item is 3 tokens: 1-id text (bos, id, eos), 8x8 ViT image (1 patch), 2x2 latent (1 token).
    return [
        SequenceItem("text", text_ids=[10]),
        SequenceItem("vit_image", image=_image()),
        SequenceItem("text", text_ids=[11]),
        SequenceItem("vae_image", latent=_latent(config), loss=True, timestep=0.5),
        SequenceItem("vae_image", latent=_latent(config)),
        SequenceItem("vit_image", image=_image()),
        SequenceItem("text", text_ids=[12], loss=True),
    ]


# Split-level visibility for the mixed sample, written by hand: row = query split, column =
# key split. Splits: 0 text, 1 ViT, 2 text, 3 noisy VAE, 4 clean VAE, 5 ViT, 6 text.
# "c" = causal inside a text split, "f" = full inside an image split, 1/0 = all/none.
SPLIT_TABLE = [
    ["c", 0, 0, 0, 0, 0, 0],
    [1, "f", 0, 0, 0, 0, 0],
    [1, 1, "c", 0, 0, 0, 0],
    [1, 1, 1, "f", 0, 0, 0],
    [1, 1, 1, 0, "f", 0, 0],
    [1, 1, 1, 0, 1, "f", 0],
    [1, 1, 1, 0, 1, 1, "c"],
]


def _expected_mask() -> torch.Tensor:
    expected = torch.zeros(21, 21, dtype=torch.bool)
    for q_split, row in enumerate(SPLIT_TABLE):
        for k_split, entry in enumerate(row):
            block = expected[3 * q_split: 3 * q_split + 3, 3 * k_split: 3 * k_split + 3]
            if entry == "c":
                block[:] = torch.ones(3, 3, dtype=torch.bool).tril()
            elif entry in ("f", 1):
                block[:] = True
    return expected


def test_mask_table(config):
    second = [SequenceItem("text", text_ids=[1, 2]), SequenceItem("vit_image", image=_image())]
    batch = pack_samples([_mixed_sample(config), second], config)
    mask = batch.dense_mask()
    assert batch.sample_lens == [21, 7]
    assert torch.equal(mask[:21, :21], _expected_mask())
    assert not mask[:21, 21:].any()  # no attention across samples
    assert not mask[21:, :21].any()
    assert torch.equal(mask[21:25, 21:25], torch.ones(4, 4, dtype=torch.bool).tril())
    assert mask[25:, 21:].all()  # the trailing ViT block attends to the text and to itself


def test_attn_modes(config):
    batch = pack_samples([_mixed_sample(config)], config)
    assert batch.attn_modes == [["causal", "full", "causal", "noise", "full", "full", "causal"]]
    assert batch.split_lens == [[3] * 7]


def test_position_ids_rules(config):
    sample = [
        SequenceItem("text", text_ids=[1, 2]),
        SequenceItem("vit_image", image=_image()),
        SequenceItem("vae_image", latent=_latent(config), loss=True),
        SequenceItem("vae_image", latent=_latent(config)),
        SequenceItem("vit_image", image=_image()),
        SequenceItem("text", text_ids=[3]),
    ]
    batch = pack_samples([sample, sample[-1:]], config)
    expected = [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 5, 6, 6, 6, 7, 8, 9] + [0, 1, 2]
    assert batch.packed_position_ids.tolist() == expected


def test_position_ids_dropped_items(config):
    sample = [
        SequenceItem("text", text_ids=[1], enable_cfg=True, dropped=True),
        SequenceItem("vit_image", image=_image(), enable_cfg=True, dropped=True),
        SequenceItem("vae_image", latent=_latent(config), enable_cfg=True, dropped=True),
        SequenceItem("text", text_ids=[2]),
    ]
    batch = pack_samples([sample], config)
    # The dropped text takes no id, but each dropped image takes one.
    assert batch.packed_position_ids.tolist() == [2, 3, 4]
    assert batch.sample_lens == [3]


def test_text_labels(config):
    sample = [
        SequenceItem("text", text_ids=[7, 8], loss=True),
        SequenceItem("text", text_ids=[9], special_token_loss=True, special_token_label=VISION_START_ID),
    ]
    batch = pack_samples([sample], config)
    assert batch.packed_text_ids.tolist() == [BOS_ID, 7, 8, EOS_ID, BOS_ID, 9, EOS_ID]
    assert batch.ce_loss_indexes.tolist() == [0, 1, 2, 6]
    assert batch.packed_label_ids.tolist() == [7, 8, EOS_ID, VISION_START_ID]


def test_index_tensors(config):
    batch = pack_samples([_mixed_sample(config)], config)
    assert batch.packed_vit_token_indexes.tolist() == [4, 16]
    assert batch.packed_vae_token_indexes.tolist() == [10, 13]
    assert batch.mse_loss_indexes.tolist() == [10]
    assert batch.packed_latent_noisy.tolist() == [True, False]
    assert batch.vit_token_seqlens == [1, 1]
    assert batch.latent_shapes == [(1, 1), (1, 1)]
    assert batch.packed_text_ids[1:4].tolist() == [10, EOS_ID, VISION_START_ID]
    assert batch.packed_text_ids[4].item() == VISION_END_ID
    # Markers and ViT tokens use the understanding expert, latents the generation expert.
    expected_experts = [0] * 21
    expected_experts[10] = expected_experts[13] = 1
    assert batch.packed_expert_ids.tolist() == expected_experts


def test_timesteps_per_block(config):
    config.timestep_shift = 3.0
    sample = [
        SequenceItem("vae_image", latent=_latent(config, 4), loss=True),
        SequenceItem("vae_image", latent=_latent(config, 4)),
        SequenceItem("vae_image", latent=_latent(config, 4), loss=True),
    ]
    batch = pack_samples([sample], config, generator=torch.Generator().manual_seed(3))
    t = batch.packed_timesteps.view(3, 4)
    t0 = torch.sigmoid(torch.randn(2, generator=torch.Generator().manual_seed(3)))
    shifted = 3.0 * t0 / (1 + 2.0 * t0)
    assert torch.equal(t[0], shifted[0].expand(4))  # one draw per noisy block
    assert torch.equal(t[1], torch.zeros(4))  # clean copy
    assert torch.equal(t[2], shifted[1].expand(4))


def test_patchify_order():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)  # [C, H, W]
    tokens = patchify(x, 2)  # 2 x 3 patches of 2 x 2 x 2
    assert tokens.shape == (6, 8)
    for row in range(2):
        for col in range(3):
            for py in range(2):
                for px in range(2):
                    for channel in range(2):
                        value = tokens[row * 3 + col, (py * 2 + px) * 2 + channel]
                        assert value == x[channel, row * 2 + py, col * 2 + px]


def test_patchify_roundtrip():
    latent = torch.randn(4, 6, 8)
    assert torch.equal(unpatchify(patchify(latent, 2), 3, 4, 2), latent)
    image = torch.randn(3, 24, 32)
    assert torch.equal(unpatchify(patchify(image, 8), 3, 4, 8), image)


def test_grid_position_ids():
    assert grid_position_ids(2, 3, 4).tolist() == [0, 1, 2, 4, 5, 6]


def _two_samples(config):
    first = [SequenceItem("text", text_ids=[1, 2, 3], loss=True),
             SequenceItem("vae_image", latent=_latent(config, 4), loss=True, timestep=0.3)]
    second = [SequenceItem("vit_image", image=_image(16, 24)),
              SequenceItem("text", text_ids=[4, 5], loss=True),
              SequenceItem("vae_image", latent=_latent(config, 4), loss=True, timestep=0.8)]
    return first, second


def test_packed_equals_per_sample(model, config):
    torch.manual_seed(1)
    first, second = _two_samples(config)
    packed = pack_samples([first, second], config)
    noise = torch.randn(packed.packed_latent.shape)
    out = model(packed, noise=noise)
    out_first = model(pack_samples([first], config), noise=noise[:4])
    out_second = model(pack_samples([second], config), noise=noise[4:])

    length = packed.sample_lens[0]
    assert (out.last_hidden_state[:length] - out_first.last_hidden_state).abs().max() < 1e-5
    assert (out.last_hidden_state[length:] - out_second.last_hidden_state).abs().max() < 1e-5
    ce_sum = out_first.ce_loss * out_first.num_ce_tokens + out_second.ce_loss * out_second.num_ce_tokens
    torch.testing.assert_close(out.ce_loss * out.num_ce_tokens, ce_sum)
    mse_sum = out_first.mse_loss * out_first.num_mse_tokens + out_second.mse_loss * out_second.num_mse_tokens
    torch.testing.assert_close(out.mse_loss * out.num_mse_tokens, mse_sum)


def test_block_mask_equals_dense_mask(model, config):
    batch = pack_samples([_mixed_sample(config), *_two_samples(config)], config)
    noise = torch.randn(batch.packed_latent.shape)
    block = model(batch, noise=noise, mask="block")
    dense = model(batch, noise=noise, mask="dense")
    assert (block.last_hidden_state - dense.last_hidden_state).abs().max() < 1e-5
    torch.testing.assert_close(block.loss, dense.loss)


def test_noise_invisible_outside_block(model, config):
    batch = pack_samples([_mixed_sample(config)], config)
    noise = torch.randn(batch.packed_latent.shape)
    before = model(batch, noise=noise).last_hidden_state
    noise_changed = noise.clone()
    noise_changed[0] += 5.0  # the noisy latent token (sequence position 10)
    after = model(batch, noise=noise_changed).last_hidden_state

    inside = torch.zeros(21, dtype=torch.bool)
    inside[9:12] = True  # vision_start, latent, vision_end of the noise split
    assert torch.equal(before[~inside], after[~inside])
    assert not torch.allclose(before[inside], after[inside])


def test_noise_gradient_outside_block(model, config):
    batch = pack_samples([_mixed_sample(config)], config)
    batch.packed_latent.requires_grad_(True)
    hidden = model(batch, noise=torch.randn(batch.packed_latent.shape)).last_hidden_state
    outside = torch.ones(21, dtype=torch.bool)
    outside[9:12] = False
    hidden[outside].sum().backward()
    grad = batch.packed_latent.grad
    assert torch.count_nonzero(grad[0]) == 0  # noisy latent: no influence outside its block
    assert torch.count_nonzero(grad[1]) > 0  # the clean copy is visible to later tokens


def test_loss_without_vae_or_text(model, config):
    text_only = pack_samples([[SequenceItem("text", text_ids=[1, 2], loss=True)]], config)
    output = model(text_only)
    assert output.num_mse_tokens == 0
    assert output.mse_loss.item() == 0.0
    output.loss.backward()

    vae_only = pack_samples([[SequenceItem("vae_image", latent=_latent(config, 4), loss=True)]], config)
    output = model(vae_only)
    assert output.num_ce_tokens == 0
    assert output.ce_loss.item() == 0.0
    output.loss.backward()
    assert model.llm2vae.weight.grad is not None


def test_invalid_items(config):
    with pytest.raises(ValueError, match="needs text_ids"):
        SequenceItem("text")
    with pytest.raises(ValueError, match="type='audio'"):
        SequenceItem("audio")
    with pytest.raises(ValueError, match="not a multiple of patch_size=8"):
        pack_samples([[SequenceItem("vit_image", image=_image(12, 16))]], config)
    with pytest.raises(ValueError, match="max_latent_size=4"):
        pack_samples([[SequenceItem("vae_image", latent=_latent(config, 10))]], config)
    with pytest.raises(ValueError, match="sample 0 has no tokens"):
        pack_samples([[SequenceItem("text", text_ids=[1], dropped=True)]], config)
