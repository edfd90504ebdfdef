"""Inference with a KV cache: captioning, text-to-image, editing and "think" mode.

A context is a KV cache plus its RoPE counter. Text adds bos + ids + eos on consecutive
ids with causal attention. A ViT image or a clean VAE latent adds one full-attention
block on a single id. To sample an image, the query block [vision_start, h*w latents,
vision_end] attends to the cached context at the current id without being stored, and
Euler steps follow the shifted grid (BAGEL, arXiv 2505.14683).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cfg import cfg_active, combine_cfg, needs_image_uncond, validate_renorm_type
from .flow import euler_step, euler_timesteps
from .model import Bagel
from .mot import KVCache
from .packing import grid_position_ids, patchify, unpatchify
from .tokenizer import BOS_ID, EOS_ID, VISION_END_ID, VISION_START_ID, ByteTokenizer

logger = logging.getLogger(__name__)

THINK_SYSTEM_PROMPT = (
    "Before answering, reason about the request step by step and write that reasoning "
    "inside <think> </think>. Then produce the answer or the image."
)


@dataclass(frozen=True)
class InferenceContext:
    """KV cache of one sequence and the RoPE id that its next block will use."""

    kv_cache: KVCache = field(default_factory=KVCache)
    position: int = 0

    def __len__(self) -> int:
        return len(self.kv_cache)


@dataclass
class _Block:
    """New tokens for one context: embeddings [n, H], RoPE ids [n] and expert ids [n]."""

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    expert_ids: torch.Tensor

    def __len__(self) -> int:
        return self.inputs_embeds.shape[0]


def _merge_caches(contexts: Sequence[InferenceContext]) -> KVCache | None:
    """Concatenate the caches of several contexts along the sequence axis."""
    caches = [context.kv_cache for context in contexts if len(context) > 0]
    if not caches:
        return None
    num_layers = len(caches[0].key_values)
    return KVCache(tuple(
        (torch.cat([cache.key_values[i][0] for cache in caches]),
         torch.cat([cache.key_values[i][1] for cache in caches]))
        for i in range(num_layers)
    ))


def _batch_mask(past_lens: list[int], new_lens: list[int], causal: bool, device: torch.device) -> torch.Tensor:
    """Return the [T, S_past + T] mask under which each block attends to its own context only."""
    past_total, new_total = sum(past_lens), sum(new_lens)
    mask = torch.zeros(new_total, past_total + new_total, dtype=torch.bool, device=device)
    past_start = new_start = 0
    for past_len, new_len in zip(past_lens, new_lens, strict=True):
        rows = slice(new_start, new_start + new_len)
        mask[rows, past_start: past_start + past_len] = True
        own = torch.ones(new_len, new_len, dtype=torch.bool, device=device)
        # Causal text is bottom-right aligned: new token i attends to the cache and new tokens 0..i.
        mask[rows, past_total + new_start: past_total + new_start + new_len] = own.tril() if causal else own
        past_start += past_len
        new_start += new_len
    return mask


def _run_blocks(
    model: Bagel, contexts: Sequence[InferenceContext], blocks: Sequence[_Block], causal: bool
) -> tuple[list[torch.Tensor], list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Run one block per context in a single decoder call, causal (text) or full (image).

    Returns each block's last hidden states [n, H] and its per-layer keys and values.
    """
    new_lens = [len(block) for block in blocks]
    mask = _batch_mask([len(context) for context in contexts], new_lens, causal, model.device)
    output = model.language_model(
        torch.cat([block.inputs_embeds for block in blocks]),
        torch.cat([block.position_ids for block in blocks]).to(model.device),
        torch.cat([block.expert_ids for block in blocks]).to(model.device),
        mask,
        past_key_values=_merge_caches(contexts),
    )
    hidden_states = list(output.last_hidden_state.split(new_lens))
    key_values = [[] for _ in blocks]
    for k, v in output.key_values:
        for index, (k_block, v_block) in enumerate(zip(k.split(new_lens), v.split(new_lens), strict=True)):
            key_values[index].append((k_block, v_block))
    return hidden_states, key_values


def _extend(
    model: Bagel, context: InferenceContext, block: _Block, causal: bool, position_step: int
) -> InferenceContext:
    _, key_values = _run_blocks(model, [context], [block], causal)
    return InferenceContext(context.kv_cache.extend(key_values[0]), context.position + position_step)


def _expert_ids(model: Bagel, modality: str, num_tokens: int) -> torch.Tensor:
    return torch.full((num_tokens,), model.config.llm.expert_index(modality), dtype=torch.long)


def _image_block(model: Bagel, body_embeds: torch.Tensor, body_modality: str, position: int) -> _Block:
    """Wrap body tokens in vision_start / vision_end, all on one RoPE id."""
    markers = model.embed_text(torch.tensor([VISION_START_ID, VISION_END_ID], device=model.device))
    inputs_embeds = torch.cat([markers[:1], body_embeds, markers[1:]])  # [n + 2, H]
    expert_ids = torch.cat(
        [_expert_ids(model, "text", 1), _expert_ids(model, body_modality, body_embeds.shape[0]),
         _expert_ids(model, "text", 1)]
    )
    return _Block(inputs_embeds, torch.full((inputs_embeds.shape[0],), position), expert_ids)


@torch.no_grad()
def add_text(model: Bagel, context: InferenceContext, token_ids: Sequence[int]) -> InferenceContext:
    """Append bos + token_ids + eos with causal attention. The RoPE counter advances by their count."""
    tokens = torch.tensor([BOS_ID, *token_ids, EOS_ID], device=model.device)
    block = _Block(
        model.embed_text(tokens),
        context.position + torch.arange(len(tokens)),
        _expert_ids(model, "text", len(tokens)),
    )
    return _extend(model, context, block, causal=True, position_step=len(tokens))


@torch.no_grad()
def add_vit_image(model: Bagel, context: InferenceContext, image: torch.Tensor) -> InferenceContext:
    """Append a ViT block for pixels [3, H, W] in [-1, 1]. The RoPE counter advances by 1."""
    vit = model.config.vit
    h, w = image.shape[1] // vit.patch_size, image.shape[2] // vit.patch_size
    tokens = patchify(image.float(), vit.patch_size).to(model.device)  # [h*w, 3 P^2]
    vit_position_ids = grid_position_ids(h, w, vit.max_patches_per_side).to(model.device)
    body = model.embed_vit(tokens, vit_position_ids, [h * w])
    block = _image_block(model, body, "vit", context.position)
    return _extend(model, context, block, causal=False, position_step=1)


def _latent_body(model: Bagel, x_t: torch.Tensor, t: float, h: int, w: int) -> torch.Tensor:
    """Embed latent tokens [..., h*w, p*p*C] at time t as vae2llm(x_t) + TimeEmb(t) + LatPos."""
    num_tokens, token_dim = h * w, x_t.shape[-1]
    flat = x_t.reshape(-1, token_dim).to(model.device)  # [B * h*w, p*p*C]
    position_ids = grid_position_ids(h, w, model.config.max_latent_size).to(model.device)
    position_ids = position_ids.repeat(flat.shape[0] // num_tokens)
    timesteps = torch.full((flat.shape[0],), float(t), device=model.device)
    body = model.embed_latents(flat, timesteps, position_ids)
    return body.reshape(*x_t.shape[:-1], body.shape[-1])  # [..., h*w, H]


@torch.no_grad()
def add_vae_latent(model: Bagel, context: InferenceContext, latent: torch.Tensor) -> InferenceContext:
    """Append a clean VAE block (t = 0) for a latent [C, H', W']. The RoPE counter advances by 1."""
    p = model.config.latent_patch_size
    h, w = latent.shape[1] // p, latent.shape[2] // p
    body = _latent_body(model, patchify(latent.float(), p), 0.0, h, w)
    block = _image_block(model, body, "vae", context.position)
    return _extend(model, context, block, causal=False, position_step=1)


@torch.no_grad()
def predict_velocities(
    model: Bagel, contexts: Sequence[InferenceContext], x_t: torch.Tensor, t: float, h: int, w: int
) -> torch.Tensor:
    """Predict velocities [B, h*w, p*p*C] of latents x_t [B, h*w, p*p*C], row b after contexts[b].

    All B queries run in one decoder call, and no cache is updated.
    """
    bodies = _latent_body(model, x_t, t, h, w)  # [B, h*w, H]
    blocks = [_image_block(model, body, "vae", context.position) for body, context in zip(bodies, contexts, strict=True)]
    hidden_states, _ = _run_blocks(model, contexts, blocks, causal=False)
    latent_hidden = torch.stack([hidden[1:-1] for hidden in hidden_states])  # drop the markers
    return model.llm2vae(latent_hidden)


@torch.no_grad()
def predict_velocity(
    model: Bagel, context: InferenceContext, x_t: torch.Tensor, t: float, h: int, w: int
) -> torch.Tensor:
    """Predict the velocity [h*w, p*p*C] of latent tokens x_t at time t without updating the cache."""
    return predict_velocities(model, [context], x_t[None], t, h, w)[0]


@dataclass
class TextGeneration:
    token_ids: list[int]  # generated ids without the final eos
    logits: list[torch.Tensor]  # [V] logits of every step
    context: InferenceContext  # input context + bos + generated ids + eos


@torch.no_grad()
def generate_texts(
    model: Bagel,
    contexts: Sequence[InferenceContext],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[TextGeneration]:
    """Generate after each context from bos until eos or max_new_tokens, one decoder call per step.

    Temperature 0 is greedy. The returned contexts end with eos, also when max_new_tokens stopped them.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    results = [TextGeneration([], [], context) for context in contexts]
    next_tokens = [BOS_ID] * len(results)
    active = list(range(len(results)))
    while active:
        # Feed every active context its next token, causal, and store it in the cache.
        tokens = torch.tensor([next_tokens[i] for i in active], device=model.device)
        embeds = model.embed_text(tokens)
        blocks = [
            _Block(embeds[row: row + 1], torch.tensor([results[i].context.position]), _expert_ids(model, "text", 1))
            for row, i in enumerate(active)
        ]
        hidden_states, key_values = _run_blocks(model, [results[i].context for i in active], blocks, causal=True)
        for row, i in enumerate(active):
            context = results[i].context
            results[i].context = InferenceContext(context.kv_cache.extend(key_values[row]), context.position + 1)

        # Contexts that were fed eos are finished. The others pick their next token.
        still_active = []
        for row, i in enumerate(active):
            if next_tokens[i] == EOS_ID:
                continue
            logits = model.lm_head(hidden_states[row][-1]).float()  # [V]
            results[i].logits.append(logits)
            token = _pick_token(logits, temperature, generator)
            if token != EOS_ID:
                results[i].token_ids.append(token)
                if len(results[i].token_ids) == max_new_tokens:
                    token = EOS_ID  # close the text block so the context stays well formed
            next_tokens[i] = token
            still_active.append(i)
        active = still_active
    return results


@torch.no_grad()
def generate_text(
    model: Bagel,
    context: InferenceContext,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> TextGeneration:
    """Generate from bos until eos or max_new_tokens. Temperature 0 is greedy."""
    return generate_texts(model, [context], max_new_tokens, temperature, generator)[0]


def _pick_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@dataclass(frozen=True)
class CFGContexts:
    """The three contexts of image guidance."""

    cond: InferenceContext  # everything
    text_uncond: InferenceContext  # snapshot before the latest text: all images, not the latest text
    img_uncond: InferenceContext  # all text, no images


def build_cfg_contexts(model: Bagel, inputs: Sequence[tuple[str, object]]) -> CFGContexts:
    """Prefill the three CFG contexts from ("text", ids), ("vit", pixels) or ("vae", latent) inputs."""
    cond = text_uncond = img_uncond = InferenceContext()
    for kind, value in inputs:
        if kind == "text":
            text_uncond = cond
            cond = add_text(model, cond, value)
            img_uncond = add_text(model, img_uncond, value)
        elif kind in ("vit", "vae"):
            add_image = add_vit_image if kind == "vit" else add_vae_latent
            cond = add_image(model, cond, value)
            text_uncond = cond
        else:
            raise ValueError(f"unknown input kind {kind!r}; expected 'text', 'vit' or 'vae'")
    return CFGContexts(cond, text_uncond, img_uncond)


@dataclass(frozen=True)
class SamplerSettings:
    """Euler sampler and guidance settings. Defaults are BAGEL's text-to-image ones."""

    steps: int = 50
    shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    cfg_renorm_type: str = "global"
    cfg_renorm_min: float = 0.0

    def __post_init__(self) -> None:
        validate_renorm_type(self.cfg_renorm_type)
        if self.steps < 2:
            raise ValueError(f"steps={self.steps} must be at least 2")


@torch.no_grad()
def sample_latent_tokens(
    model: Bagel,
    contexts: Sequence[CFGContexts],
    h: int,
    w: int,
    settings: SamplerSettings,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate B latents from noise at t = 1 to t = 0 with guided Euler steps.

    Returns [B, h*w, p*p*C]. `initial_noise` of that shape defaults to N(0, I) drawn from
    `generator`. Every velocity of a step (all prompts and CFG branches) comes from one
    decoder call.
    """
    batch_size = len(contexts)
    x = initial_noise
    if x is None:
        x = torch.randn(batch_size, h * w, model.config.latent_token_dim, generator=generator)
    x = x.to(model.device, model.dtype)
    use_img = needs_image_uncond(settings.cfg_img_scale, settings.cfg_renorm_type)
    grid = euler_timesteps(settings.steps, settings.shift).tolist()
    for t, t_next in zip(grid[:-1], grid[1:]):
        # Stack the branches that this step needs: cond, then text-uncond and image-uncond.
        guided = cfg_active(t, settings.cfg_interval, settings.cfg_text_scale)
        branch_contexts = [c.cond for c in contexts]
        if guided:
            branch_contexts += [c.text_uncond for c in contexts]
            if use_img:
                branch_contexts += [c.img_uncond for c in contexts]
        num_branches = len(branch_contexts) // batch_size
        velocities = predict_velocities(model, branch_contexts, x.repeat(num_branches, 1, 1), t, h, w)
        velocities = velocities.view(num_branches, batch_size, h * w, -1)  # [branches, B, h*w, D]

        if guided:
            # Global renorm takes one norm per image, so combine image by image.
            v_img = velocities[2] if use_img else [None] * batch_size
            velocity = torch.stack([
                combine_cfg(
                    velocities[0][b], velocities[1][b], v_img[b], settings.cfg_text_scale,
                    settings.cfg_img_scale, settings.cfg_renorm_type, settings.cfg_renorm_min,
                )
                for b in range(batch_size)
            ])
        else:
            velocity = velocities[0]
        x = euler_step(x, velocity, t, t_next)
    return x


def _think(
    model: Bagel, contexts: CFGContexts, max_think_tokens: int, think_temperature: float,
    generator: torch.Generator | None, tokenizer: ByteTokenizer,
) -> CFGContexts:
    # The model's reasoning text goes into the conditional context only.
    thought = generate_text(model, contexts.cond, max_think_tokens, think_temperature, generator)
    logger.info("think mode output: %s", tokenizer.decode(thought.token_ids))
    return CFGContexts(thought.context, contexts.text_uncond, contexts.img_uncond)


def _latent_grid(model: Bagel, latent_hw: tuple[int, int]) -> tuple[int, int]:
    p, side = model.config.latent_patch_size, model.config.max_latent_size
    h, w = latent_hw[0] // p, latent_hw[1] // p
    if h < 1 or w < 1 or max(h, w) > side:
        raise ValueError(
            f"latent size {tuple(latent_hw)} gives {h}x{w} tokens, but each side must be in "
            f"[1, max_latent_size={side}]"
        )
    return h, w


def _sample(
    model: Bagel,
    tokenizer: ByteTokenizer,
    input_lists: list[list[tuple[str, object]]],
    h: int,
    w: int,
    settings: SamplerSettings,
    generator: torch.Generator | None,
    think: dict | None,
) -> torch.Tensor:
    """Prefill the CFG contexts of every request, optionally think, then sample [B, C, h*p, w*p].

    `think` is None, or the "max_tokens" and "temperature" of the reasoning text.
    """
    all_contexts = []
    for inputs in input_lists:
        if think is not None:
            inputs = [("text", tokenizer.encode(THINK_SYSTEM_PROMPT)), *inputs]
        contexts = build_cfg_contexts(model, inputs)
        if think is not None:
            contexts = _think(model, contexts, think["max_tokens"], think["temperature"], generator, tokenizer)
        all_contexts.append(contexts)
    tokens = sample_latent_tokens(model, all_contexts, h, w, settings, generator).float().cpu()
    return torch.stack([unpatchify(t, h, w, model.config.latent_patch_size) for t in tokens])


@torch.no_grad()
def generate_images(
    model: Bagel,
    tokenizer: ByteTokenizer,
    prompts: Sequence[str],
    latent_hw: tuple[int, int],
    *,
    steps: int = 50,
    shift: float = 3.0,
    cfg_text_scale: float = 4.0,
    cfg_img_scale: float = 1.5,
    cfg_interval: tuple[float, float] = (0.4, 1.0),
    cfg_renorm_type: str = "global",
    cfg_renorm_min: float = 0.0,
    generator: torch.Generator | None = None,
    think: bool = False,
    max_think_tokens: int = 256,
    think_temperature: float = 0.3,
) -> torch.Tensor:
    """Sample VAE latents [B, C, H', W'] for B prompts, where `latent_hw` = (H', W') in latent pixels.

    Defaults are BAGEL's text-to-image settings. With no input image the image-unconditional
    context equals the conditional one, so s_I > 1 scales text guidance to 1 + s_I (s_T - 1).
    The attention mask of one step grows with the square of B, so split large batches.
    """
    settings = SamplerSettings(
        steps, shift, cfg_text_scale, cfg_img_scale, tuple(cfg_interval), cfg_renorm_type, cfg_renorm_min
    )
    h, w = _latent_grid(model, latent_hw)
    input_lists = [[("text", tokenizer.encode(prompt))] for prompt in prompts]
    think_settings = {"max_tokens": max_think_tokens, "temperature": think_temperature} if think else None
    return _sample(model, tokenizer, input_lists, h, w, settings, generator, think_settings)


@torch.no_grad()
def generate_image(
    model: Bagel,
    tokenizer: ByteTokenizer,
    prompt: str,
    latent_hw: tuple[int, int],
    **kwargs,
) -> torch.Tensor:
    """Sample one VAE latent [C, H', W'] for `prompt`. Keyword arguments are those of `generate_images`."""
    return generate_images(model, tokenizer, [prompt], latent_hw, **kwargs)[0]


@torch.no_grad()
def edit_images(
    model: Bagel,
    tokenizer: ByteTokenizer,
    source_images: Sequence[torch.Tensor],
    source_latents: Sequence[torch.Tensor],
    instructions: Sequence[str],
    *,
    steps: int = 50,
    shift: float = 3.0,
    cfg_text_scale: float = 4.0,
    cfg_img_scale: float = 2.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    cfg_renorm_type: str = "text_channel",
    cfg_renorm_min: float = 0.0,
    generator: torch.Generator | None = None,
    think: bool = False,
    max_think_tokens: int = 256,
    think_temperature: float = 0.3,
) -> torch.Tensor:
    """Sample edited latents [B, C, H', W'], each of its source latent's size (all sources equal).

    Each source enters as a clean VAE block, then as a ViT block, and its instruction follows.
    Defaults are BAGEL's editing settings.
    """
    if not len(source_images) == len(source_latents) == len(instructions):
        raise ValueError(
            f"got {len(source_images)} source images, {len(source_latents)} source latents and "
            f"{len(instructions)} instructions; pass one of each per edit"
        )
    shapes = {tuple(latent.shape) for latent in source_latents}
    if len(shapes) != 1:
        raise ValueError(f"source latents have different shapes {sorted(shapes)}; batch equal sizes only")
    settings = SamplerSettings(
        steps, shift, cfg_text_scale, cfg_img_scale, tuple(cfg_interval), cfg_renorm_type, cfg_renorm_min
    )
    h, w = _latent_grid(model, tuple(source_latents[0].shape[1:]))
    input_lists = [
        [("vae", latent), ("vit", image), ("text", tokenizer.encode(instruction))]
        for image, latent, instruction in zip(source_images, source_latents, instructions, strict=True)
    ]
    think_settings = {"max_tokens": max_think_tokens, "temperature": think_temperature} if think else None
    return _sample(model, tokenizer, input_lists, h, w, settings, generator, think_settings)


@torch.no_grad()
def edit_image(
    model: Bagel,
    tokenizer: ByteTokenizer,
    source_image: torch.Tensor,
    source_latent: torch.Tensor,
    instruction: str,
    **kwargs,
) -> torch.Tensor:
    """Sample one edited latent with the source latent's size. Keyword arguments are those of `edit_images`."""
    return edit_images(model, tokenizer, [source_image], [source_latent], [instruction], **kwargs)[0]


@torch.no_grad()
def captions(
    model: Bagel,
    tokenizer: ByteTokenizer,
    images: Sequence[torch.Tensor],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Describe pixels [3, H, W] in [-1, 1]. Each prompt is the ViT image alone, then text from bos."""
    contexts = [add_vit_image(model, InferenceContext(), image) for image in images]
    generations = generate_texts(model, contexts, max_new_tokens, temperature, generator)
    return [tokenizer.decode(generation.token_ids) for generation in generations]


@torch.no_grad()
def caption(
    model: Bagel,
    tokenizer: ByteTokenizer,
    image: torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> str:
    """Describe one image. See `captions`."""
    return captions(model, tokenizer, [image], max_new_tokens, temperature, generator)[0]
