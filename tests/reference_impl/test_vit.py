"""NaViT packing, layer selection and the connector's sin-cos table."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from reference_impl.bagel.config import ViTConfig
from reference_impl.bagel.flow import sincos_2d_table
from reference_impl.bagel.packing import grid_position_ids, patchify
from reference_impl.bagel.vit import VisionConnector, VisionTransformer


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig()).eval()
    for param in vit.parameters():
        torch.nn.init.normal_(param, std=0.05)
    return vit


def _patches(image: torch.Tensor, config: ViTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = image.shape[1] // config.patch_size, image.shape[2] // config.patch_size
    return patchify(image, config.patch_size), grid_position_ids(h, w, config.max_patches_per_side)


def test_navit_packed_equals_per_image():
    vit = _vit()
    images = [torch.rand(3, 32, 32) * 2 - 1, torch.rand(3, 24, 32) * 2 - 1, torch.rand(3, 32, 24) * 2 - 1]
    pieces = [_patches(image, vit.config) for image in images]
    seqlens = [tokens.shape[0] for tokens, _ in pieces]
    packed = vit(torch.cat([t for t, _ in pieces]), torch.cat([p for _, p in pieces]), seqlens)
    assert seqlens == [16, 12, 12]
    for output, (tokens, position_ids) in zip(packed.split(seqlens), pieces, strict=True):
        alone = vit(tokens, position_ids, [tokens.shape[0]])
        assert (output - alone).abs().max() < 1e-5


def test_vit_position_ids_row_major():
    config = ViTConfig()
    _, position_ids = _patches(torch.zeros(3, 24, 32), config)  # 3 x 4 patches, M = 4
    assert position_ids.tolist() == [r * 4 + c for r in range(3) for c in range(4)]


def test_vit_drops_last_layer():
    config = ViTConfig(num_hidden_layers=3, select_layer=-2)
    vit = VisionTransformer(config)
    assert len(vit.layers) == 2
    assert isinstance(vit.post_layernorm, torch.nn.LayerNorm)
    assert vit.post_layernorm.eps == 1e-6


def test_vit_layer_closed_form():
    vit = _vit()
    layer = vit.layers[0]
    x = torch.randn(5, 64)
    attn_in = layer.layer_norm1(x)
    attn = layer.self_attn
    q = attn.q_proj(attn_in).view(5, 4, 16).transpose(0, 1)  # [heads, N, d]
    k = attn.k_proj(attn_in).view(5, 4, 16).transpose(0, 1)
    v = attn.v_proj(attn_in).view(5, 4, 16).transpose(0, 1)
    weights = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)  # no mask: bidirectional
    hidden = x + attn.out_proj((weights @ v).transpose(0, 1).reshape(5, 64))
    mlp_in = layer.layer_norm2(hidden)
    expected = hidden + layer.mlp.fc2(F.gelu(layer.mlp.fc1(mlp_in), approximate="tanh"))
    torch.testing.assert_close(layer(x, [5]), expected, atol=1e-5, rtol=1e-5)


def test_connector_adds_sincos_table():
    torch.manual_seed(0)
    connector = VisionConnector(64, 128, 4)
    features = torch.randn(6, 64)
    position_ids = torch.tensor([0, 1, 5, 6, 14, 15])
    mlp_only = connector.fc2(F.gelu(connector.fc1(features), approximate="tanh"))
    table = sincos_2d_table(128, 4)
    torch.testing.assert_close(connector(features, position_ids) - mlp_only, table[position_ids])
    assert not any(p is connector.pos_embed.table for p in connector.parameters())  # frozen
