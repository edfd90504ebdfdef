"""KV-cache inference against full recomputation, CFG contexts and the high-level helpers."""

from __future__ import annotations

import torch

from reference_impl.bagel.inference import (
    InferenceContext,
    SamplerSettings,
    add_text,
    add_vae_latent,
    add_vit_image,
    build_cfg_contexts,
    caption,
    edit_image,
    generate_image,
    generate_images,
    generate_text,
    generate_texts,
    predict_velocities,
    predict_velocity,
    sample_latent_tokens,
)
from reference_impl.bagel.packing import SequenceItem, pack_samples, patchify
from reference_impl.bagel.tokenizer import EOS_ID, ByteTokenizer


def _image() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(3, 16, 24) * 2 - 1


def _full_forward(model, config, items):
    batch = pack_samples([items], config)
    output, _ = model.run_decoder(batch, noise=torch.zeros(batch.packed_latent.shape))
    return batch, output


def test_chunked_prefill_equals_full(model, config):
    image = _image()
    context = add_text(model, InferenceContext(), [5, 6, 7])
    context = add_vit_image(model, context, image)
    context = add_text(model, context, [8, 9])
    items = [SequenceItem("text", text_ids=[5, 6, 7]), SequenceItem("vit_image", image=image),
             SequenceItem("text", text_ids=[8, 9])]
    batch, output = _full_forward(model, config, items)

    assert len(context) == batch.sequence_length
    assert context.position == int(batch.packed_position_ids[-1]) + 1
    for (k_cached, v_cached), (k_full, v_full) in zip(context.kv_cache.key_values, output.key_values, strict=True):
        assert (k_cached - k_full).abs().max() < 1e-5
        assert (v_cached - v_full).abs().max() < 1e-5

    # The first generated step (bos) attends to the whole prefilled context.
    generation = generate_text(model, context, max_new_tokens=1)
    _, with_bos = _full_forward(model, config, [*items, SequenceItem("text", text_ids=[])])
    bos_logits = model.lm_head(with_bos.last_hidden_state[batch.sequence_length])
    assert (generation.logits[0] - bos_logits).abs().max() < 1e-4


def test_cached_greedy_equals_recompute(model, config):
    image = _image()
    context = add_vit_image(model, InferenceContext(), image)
    generation = generate_text(model, context, max_new_tokens=6)
    prefix_len = len(context)
    assert len(generation.logits) >= 1
    for step, logits in enumerate(generation.logits):
        generated = generation.token_ids[:step]
        items = [SequenceItem("vit_image", image=image), SequenceItem("text", text_ids=generated)]
        _, output = _full_forward(model, config, items)
        full_logits = model.lm_head(output.last_hidden_state[prefix_len + step])
        assert (logits - full_logits).abs().max() < 1e-4
        assert int(logits.argmax()) == int(full_logits.argmax())


def test_image_velocity_matches_training(model, config):
    torch.manual_seed(4)
    image = _image()
    source = torch.randn(config.latent_channels, 8, 8)
    target = torch.randn(config.latent_channels, 8, 8)
    t = 0.7
    items = [SequenceItem("vae_image", latent=source), SequenceItem("vit_image", image=image),
             SequenceItem("text", text_ids=[1, 2]),
             SequenceItem("vae_image", latent=target, loss=True, timestep=t)]
    batch = pack_samples([items], config)
    noise = torch.randn(batch.packed_latent.shape)
    trained = model(batch, noise=noise).predicted_velocity

    context = add_vae_latent(model, InferenceContext(), source)
    context = add_vit_image(model, context, image)
    context = add_text(model, context, [1, 2])
    x0 = patchify(target, config.latent_patch_size)
    x_t = (1 - t) * x0 + t * noise[16:]
    cached = predict_velocity(model, context, x_t, t, 4, 4)
    assert (cached - trained).abs().max() < 1e-5


def test_cfg_contexts_layout(model, config):
    image, latent = _image(), torch.randn(config.latent_channels, 8, 8)
    contexts = build_cfg_contexts(model, [("vae", latent), ("vit", image), ("text", [1, 2, 3])])
    vae_block, vit_block, text_block = 16 + 2, 6 + 2, 5
    assert len(contexts.cond) == vae_block + vit_block + text_block
    assert contexts.cond.position == 2 + text_block
    assert len(contexts.text_uncond) == vae_block + vit_block  # images, not the latest text
    assert contexts.text_uncond.position == 2
    assert len(contexts.img_uncond) == text_block  # text, no images
    assert contexts.img_uncond.position == text_block

    t2i = build_cfg_contexts(model, [("text", [1, 2, 3])])
    assert len(t2i.text_uncond) == 0


def test_generation_stops_at_eos(model):
    lm_head = torch.nn.Linear(model.config.llm.hidden_size, model.config.llm.vocab_size, bias=True)
    torch.nn.init.zeros_(lm_head.weight)
    with torch.no_grad():
        lm_head.bias.zero_()
        lm_head.bias[EOS_ID] = 1.0
    model.lm_head = lm_head
    context = add_text(model, InferenceContext(), [1])
    generation = generate_text(model, context, max_new_tokens=5)
    assert generation.token_ids == []
    assert len(generation.context) == len(context) + 2  # bos and eos were appended
    assert caption(model, ByteTokenizer(), _image()) == ""


def test_sampled_text_reproducible(model):
    context = add_text(model, InferenceContext(), [1])
    first = generate_text(model, context, 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    second = generate_text(model, context, 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) <= 5


def test_generate_image_shape(model, config):
    tokenizer = ByteTokenizer()
    latent = generate_image(model, tokenizer, "a red circle", (8, 8), steps=3,
                            generator=torch.Generator().manual_seed(0))
    again = generate_image(model, tokenizer, "a red circle", (8, 8), steps=3,
                           generator=torch.Generator().manual_seed(0))
    assert latent.shape == (config.latent_channels, 8, 8)
    assert torch.equal(latent, again)
    thought = generate_image(model, tokenizer, "a red circle", (8, 4), steps=2, think=True, max_think_tokens=2)
    assert thought.shape == (config.latent_channels, 8, 4)


def test_edit_image_shape(model, config):
    source = torch.randn(config.latent_channels, 8, 8)
    edited = edit_image(model, ByteTokenizer(), _image(), source, "make it blue", steps=3,
                        generator=torch.Generator().manual_seed(0))
    assert edited.shape == source.shape


def test_batched_velocity_equals_single(model, config):
    contexts = [
        add_text(model, InferenceContext(), [1, 2, 3]),
        add_vit_image(model, add_vae_latent(model, InferenceContext(), torch.randn(4, 8, 8)), _image()),
        InferenceContext(),
    ]
    x_t = torch.randn(3, 4, config.latent_token_dim)
    batched = predict_velocities(model, contexts, x_t, 0.6, 2, 2)
    for row, context in enumerate(contexts):
        single = predict_velocity(model, context, x_t[row], 0.6, 2, 2)
        assert (batched[row] - single).abs().max() < 1e-5


def test_batched_greedy_equals_single(model):
    contexts = [add_text(model, InferenceContext(), [1, 2, 3]), add_vit_image(model, InferenceContext(), _image())]
    batched = generate_texts(model, contexts, max_new_tokens=5)
    for context, generation in zip(contexts, batched, strict=True):
        single = generate_text(model, context, max_new_tokens=5)
        assert generation.token_ids == single.token_ids
        assert len(generation.context) == len(single.context)
        for step_batched, step_single in zip(generation.logits, single.logits, strict=True):
            assert (step_batched - step_single).abs().max() < 1e-4


def test_generate_images_batch_shape(model, config):
    latents = generate_images(model, ByteTokenizer(), ["a red circle", "a blue square"], (8, 4), steps=3,
                              cfg_interval=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, config.latent_channels, 8, 4)
    assert not torch.equal(latents[0], latents[1])


def test_batched_sampling_equals_single(model, config):
    requests = [
        [("text", [1, 2, 3])],
        [("vae", torch.randn(4, 8, 8)), ("vit", _image()), ("text", [4, 5])],
    ]
    contexts = [build_cfg_contexts(model, inputs) for inputs in requests]
    noise = torch.randn(2, 4, config.latent_token_dim)
    for renorm_type in ("global", "channel", "text_channel"):
        settings = SamplerSettings(steps=4, cfg_img_scale=2.0, cfg_interval=(0.3, 1.0), cfg_renorm_type=renorm_type)
        batched = sample_latent_tokens(model, contexts, 2, 2, settings, initial_noise=noise)
        for row in range(2):
            single = sample_latent_tokens(model, contexts[row: row + 1], 2, 2, settings, initial_noise=noise[row: row + 1])
            assert (batched[row] - single[0]).abs().max() < 1e-5
