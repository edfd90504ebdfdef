"""Decoder building blocks against closed forms and against transformers' Qwen3 / Qwen2 layers."""

from __future__ import annotations

import math

import pytest
import torch

from reference_impl.bagel.config import BagelConfig, LLMConfig, ViTConfig
from reference_impl.bagel.layers import (
    MLP,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary_pos_emb,
    kv_head_for_query_head,
    repeat_kv,
    varlen_attention,
    varlen_layout,
)
from reference_impl.bagel.model import Bagel
from reference_impl.bagel.mot import MoTDecoderLayer, packed_attention


def test_rmsnorm_closed_form():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(5, 16)
    expected = norm.weight * x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)


def test_rmsnorm_keeps_input_dtype():
    # The variance is computed in float32, but a bfloat16 model gets bfloat16 back.
    norm = RMSNorm(8).to(torch.bfloat16)
    assert norm(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_swiglu_closed_form():
    torch.manual_seed(0)
    mlp = MLP(8, 24)
    x = torch.randn(4, 8)
    gate = x @ mlp.gate_proj.weight.T
    up = x @ mlp.up_proj.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


def test_rope_rotate_half_closed_form():
    torch.manual_seed(0)
    head_dim, theta = 8, 100.0
    positions = torch.tensor([0, 3, 3, 7])
    q = torch.randn(4, 2, head_dim)
    k = torch.randn(4, 1, head_dim)
    cos, sin = RotaryEmbedding(head_dim, theta)(positions)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)

    half = head_dim // 2
    expected = torch.empty_like(q)
    for token, position in enumerate(positions.tolist()):
        for i in range(half):
            angle = position * theta ** (-2 * i / head_dim)
            a, b = q[token, :, i], q[token, :, i + half]
            expected[token, :, i] = a * math.cos(angle) - b * math.sin(angle)
            expected[token, :, i + half] = b * math.cos(angle) + a * math.sin(angle)
    torch.testing.assert_close(q_rot, expected, atol=1e-5, rtol=1e-5)
    assert k_rot.shape == k.shape


def test_rope_depends_on_offset_only():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, 1e4)
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)

    def score(q_pos: int, k_pos: int) -> torch.Tensor:
        cos_q, sin_q = rope(torch.tensor([q_pos]))
        cos_k, sin_k = rope(torch.tensor([k_pos]))
        q_rot, _ = apply_rotary_pos_emb(q, k, cos_q, sin_q)
        _, k_rot = apply_rotary_pos_emb(q, k, cos_k, sin_k)
        return (q_rot * k_rot).sum()

    torch.testing.assert_close(score(5, 2), score(13, 10), atol=1e-5, rtol=1e-5)


def test_gqa_head_mapping():
    kv = torch.randn(3, 2, 4)  # 2 KV heads
    expanded = repeat_kv(kv, 3)  # 6 query heads, groups of 3
    for query_head in range(6):
        kv_head = kv_head_for_query_head(query_head, 3)
        assert kv_head == query_head // 3
        assert torch.equal(expanded[:, query_head], kv[:, kv_head])


def test_gqa_attention_closed_form():
    torch.manual_seed(0)
    q = torch.randn(5, 4, 8)
    k = torch.randn(5, 2, 8)
    v = torch.randn(5, 2, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    output = packed_attention(q, k, v, mask).view(5, 4, 8)
    for head in range(4):
        kv_head = head // 2
        scores = q[:, head] @ k[:, kv_head].T / math.sqrt(8)
        scores = scores.masked_fill(~mask, float("-inf"))
        expected = torch.softmax(scores, dim=-1) @ v[:, kv_head]
        torch.testing.assert_close(output[:, head], expected, atol=1e-6, rtol=1e-5)


def test_additive_mask_equals_boolean():
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 4, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    additive = torch.zeros(5, 5).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(packed_attention(q, k, v, additive), packed_attention(q, k, v, allowed))


def _block_mask_and_positions() -> tuple[torch.Tensor, torch.Tensor]:
    # 3 causal text tokens, a 4-token image block on one RoPE id, 2 causal text tokens.
    position_ids = torch.tensor([0, 1, 2, 3, 3, 3, 3, 4, 5])
    allowed = torch.ones(9, 9, dtype=torch.bool).tril()
    allowed[3:7, 3:7] = True
    return allowed, position_ids


def _transformers_layer(module_name: str, llm: LLMConfig):
    transformers = pytest.importorskip("transformers")
    common = dict(
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        rms_norm_eps=llm.rms_norm_eps,
        hidden_act="silu",
        vocab_size=llm.vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
    )
    if module_name == "qwen3":
        from transformers.models.qwen3 import modeling_qwen3 as modeling

        hf_config = transformers.Qwen3Config(head_dim=llm.head_dim, attention_bias=True, **common)
        layer_cls, rope_cls = modeling.Qwen3DecoderLayer, modeling.Qwen3RotaryEmbedding
    else:
        from transformers.models.qwen2 import modeling_qwen2 as modeling

        hf_config = transformers.Qwen2Config(**common)
        layer_cls, rope_cls = modeling.Qwen2DecoderLayer, modeling.Qwen2RotaryEmbedding
    hf_config._attn_implementation = "eager"
    return layer_cls(hf_config, layer_idx=0), rope_cls(hf_config)


@pytest.mark.parametrize("reference", ["qwen3", "qwen2"])
def test_dense_layer_matches_transformers(reference):
    llm = LLMConfig(layer_type="dense", qk_norm=reference == "qwen3", rope_theta=1e4)
    torch.manual_seed(0)
    layer = MoTDecoderLayer(llm)
    for param in layer.parameters():
        torch.nn.init.normal_(param, std=0.05)
    hf_layer, hf_rope = _transformers_layer(reference, llm)
    state = layer.experts[0].state_dict()
    if reference == "qwen3":
        # Qwen3 has one bias flag for q/k/v/o, but BAGEL's o_proj has no bias.
        state["self_attn.o_proj.bias"] = torch.zeros(llm.hidden_size)
    hf_layer.load_state_dict(state, strict=True)

    allowed, position_ids = _block_mask_and_positions()
    x = torch.randn(9, llm.hidden_size)
    ours, _ = layer(x, torch.zeros(9, dtype=torch.long), RotaryEmbedding(llm.head_dim, llm.rope_theta)(position_ids), allowed)

    additive = torch.zeros(1, 1, 9, 9).masked_fill(~allowed, float("-inf"))
    cos_sin = hf_rope(x[None], position_ids[None])
    theirs = hf_layer(x[None], attention_mask=additive, position_ids=position_ids[None], position_embeddings=cos_sin)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert (ours - theirs[0]).abs().max() < 1e-5


def test_init_weights_and_zero_llm2vae():
    torch.manual_seed(0)
    model = Bagel(BagelConfig(llm=LLMConfig(hidden_size=256, intermediate_size=512)))
    q_proj = model.language_model.layers[0].experts[0].self_attn.q_proj
    assert abs(q_proj.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(q_proj.bias) == 0
    assert abs(model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model.llm2vae.weight) == 0
    assert torch.count_nonzero(model.llm2vae.bias) == 0
    assert torch.equal(model.language_model.layers[0].experts[0].input_layernorm.weight, torch.ones(256))



def test_init_weights_use_initializer_ranges():
    torch.manual_seed(0)
    config = BagelConfig(
        llm=LLMConfig(hidden_size=256, intermediate_size=512, initializer_range=0.1),
        vit=ViTConfig(initializer_range=0.05),
    )
    model = Bagel(config)
    q_proj = model.language_model.layers[0].experts[0].self_attn.q_proj
    assert abs(q_proj.weight.std().item() - 0.1) < 0.01
    assert abs(model.connector.fc1.weight.std().item() - 0.1) < 0.01
    assert abs(model.vit.patch_embedding.weight.std().item() - 0.05) < 0.005
    assert torch.count_nonzero(model.vit.patch_embedding.bias) == 0
    assert torch.count_nonzero(model.llm2vae.weight) == 0


def _attention_per_sample(q, k, v, seqlens, masks):
    outputs = []
    for i, (q_i, k_i, v_i) in enumerate(zip(q.split(seqlens), k.split(seqlens), v.split(seqlens), strict=True)):
        mask = None if masks is None else masks[i]
        scores = torch.einsum("qhd,khd->hqk", q_i, k_i) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        outputs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v_i))
    return torch.cat(outputs)


@pytest.mark.parametrize("with_masks", [False, True])
def test_varlen_attention_equals_per_sample(with_masks):
    # Lengths far apart and close together, so the layout makes several groups with padding.
    seqlens = [7, 40, 1, 33, 9, 10, 38, 2]
    torch.manual_seed(0)
    q, k, v = (torch.randn(sum(seqlens), 4, 8, requires_grad=True) for _ in range(3))
    masks = None
    if with_masks:
        masks = [torch.rand(n, n) < 0.6 for n in seqlens]
        for mask in masks:
            mask.fill_diagonal_(True)  # every query attends to at least one key

    layout = varlen_layout(seqlens, masks)
    assert 1 < len(layout.groups) < len(seqlens)
    output = varlen_attention(q, k, v, layout)
    expected = _attention_per_sample(q, k, v, seqlens, masks)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)

    weights = torch.randn_like(output)
    grads = torch.autograd.grad((output * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_varlen_layout_pads_at_most_ratio():
    seqlens = [100, 81, 80, 64, 20, 17, 16]
    layout = varlen_layout(seqlens)
    widths = [index.shape[1] for index, _, _ in layout.groups]
    assert widths == [100, 64, 20]
    for index, valid, _ in layout.groups:
        lengths = valid.sum(dim=1)
        assert (index.shape[1] <= 1.25 * lengths).all()
