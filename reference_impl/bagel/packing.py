"""Packing of interleaved text / ViT / VAE samples into one sequence with BAGEL's layout.

A sample is a list of items. Samples are concatenated with no batch dimension, and the
generalised causal mask keeps them apart. Every item is one attention split. Text is
causal, and a ViT image or a clean VAE latent is a `full` block. A VAE latent with a loss
is a `noise` block, and only tokens of that block attend to it (BAGEL, arXiv 2505.14683).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from .config import BagelConfig
from .flow import sample_timesteps
from .mot import BlockAttentionMask
from .tokenizer import BOS_ID, EOS_ID, VISION_END_ID, VISION_START_ID

ITEM_TYPES = ("text", "vit_image", "vae_image")
CAUSAL, FULL, NOISE = "causal", "full", "noise"


@dataclass
class SequenceItem:
    """One item of a sample's sequence plan.

    `image` is ViT input in [-1, 1] of shape [3, H, W] with H, W multiples of the patch size.
    `latent` is an already encoded and scaled VAE latent [C, H', W'], cropped to a
    multiple of the latent patch size. A `vae_image` with `loss=True` is a noisy target
    (MSE), without it a clean conditioning copy. `timestep` fixes t of a noisy target
    instead of drawing it. `dropped` is set by classifier-free-guidance dropout.
    """

    type: str
    text_ids: list[int] | None = None
    image: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    loss: bool = False
    enable_cfg: bool = False
    special_token_loss: bool = False
    special_token_label: int | None = None
    dropped: bool = False
    timestep: float | None = None

    def __post_init__(self) -> None:
        if self.type not in ITEM_TYPES:
            raise ValueError(f"SequenceItem.type={self.type!r} is invalid; expected one of {ITEM_TYPES}")
        required = {"text": "text_ids", "vit_image": "image", "vae_image": "latent"}[self.type]
        if getattr(self, required) is None:
            raise ValueError(f"a {self.type!r} item needs {required}")
        if self.special_token_loss and self.special_token_label is None:
            raise ValueError("special_token_loss=True needs special_token_label")
        if self.type == "vit_image" and self.loss:
            raise ValueError("a 'vit_image' item cannot carry a loss; use a 'vae_image' item for MSE")
        if self.timestep is not None and not 0.0 <= self.timestep <= 1.0:
            raise ValueError(f"timestep={self.timestep} must be in [0, 1]")

    @property
    def attn_mode(self) -> str:
        if self.type == "text":
            return CAUSAL
        return NOISE if self.type == "vae_image" and self.loss else FULL


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Flatten [C, H, W] into [h * w, p * p * C] patches in (row, col, py, px, channel) order.

    Rows and columns that do not fill a whole patch are cropped.
    """
    channels, height, width = x.shape
    h, w = height // patch_size, width // patch_size
    x = x[:, : h * patch_size, : w * patch_size]
    x = x.reshape(channels, h, patch_size, w, patch_size)  # [C, h, py, w, px]
    x = x.permute(1, 3, 2, 4, 0)  # [h, w, py, px, C]
    return x.reshape(h * w, patch_size * patch_size * channels)


def unpatchify(tokens: torch.Tensor, h: int, w: int, patch_size: int) -> torch.Tensor:
    """Invert `patchify`: [h * w, p * p * C] back to [C, h * p, w * p]."""
    channels = tokens.shape[-1] // (patch_size * patch_size)
    x = tokens.reshape(h, w, patch_size, patch_size, channels)  # [h, w, py, px, C]
    x = x.permute(4, 0, 2, 1, 3)  # [C, h, py, w, px]
    return x.reshape(channels, h * patch_size, w * patch_size)


def grid_position_ids(h: int, w: int, side: int) -> torch.Tensor:
    """Return row * side + col for an h x w grid in row-major order (the top-left of a side x side table)."""
    rows = torch.arange(h)[:, None]
    cols = torch.arange(w)[None, :]
    return (rows * side + cols).reshape(-1)


def build_sample_mask(split_lens: list[int], attn_modes: list[str]) -> torch.Tensor:
    """Return the boolean [L, L] generalised causal mask of one sample (True = query may attend).

    A query attends to a key iff (a) the key is not later, or both are in the same full/noise
    split, and (b) the key is not in a noise split other than the query's own.
    """
    split_lens_t = torch.tensor(split_lens)
    split_ids = torch.repeat_interleave(torch.arange(len(split_lens)), split_lens_t)  # [L]
    is_block = torch.repeat_interleave(torch.tensor([m != CAUSAL for m in attn_modes]), split_lens_t)
    is_noise = torch.repeat_interleave(torch.tensor([m == NOISE for m in attn_modes]), split_lens_t)
    length = int(split_lens_t.sum())

    same_split = split_ids[:, None] == split_ids[None, :]  # [L, L]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal | (same_split & is_block[:, None])
    return allowed & ~(is_noise[None, :] & ~same_split)


@dataclass
class PackedBatch:
    """Index tensors of a packed step, where `T` is the total number of tokens.

    Every `packed_*_indexes` tensor contains positions in the packed sequence. Latent
    tensors list all VAE tokens (noisy targets and clean copies) in sequence order.
    """

    sample_lens: list[int]
    split_lens: list[list[int]]
    attn_modes: list[list[str]]
    packed_position_ids: torch.Tensor  # [T] RoPE ids, restarting at 0 per sample
    packed_expert_ids: torch.Tensor  # [T] index into LLMConfig.experts
    packed_text_ids: torch.Tensor  # [N_text] text and marker token ids
    packed_text_indexes: torch.Tensor  # [N_text]
    packed_vit_tokens: torch.Tensor  # [N_vit, 3 * P * P]
    packed_vit_position_ids: torch.Tensor  # [N_vit] row * M + col
    packed_vit_token_indexes: torch.Tensor  # [N_vit]
    vit_token_seqlens: list[int]  # tokens per ViT image
    packed_latent: torch.Tensor  # [N_vae, p * p * C] clean latent tokens x0
    packed_latent_position_ids: torch.Tensor  # [N_vae] row * max_latent_size + col
    packed_vae_token_indexes: torch.Tensor  # [N_vae]
    latent_shapes: list[tuple[int, int]]  # (h, w) in tokens per VAE image
    packed_timesteps: torch.Tensor  # [N_vae] t in [0, 1], 0 for clean copies
    packed_latent_noisy: torch.Tensor  # [N_vae] bool, True for tokens of noise splits
    mse_loss_indexes: torch.Tensor  # [N_mse] positions of noisy latent tokens
    packed_label_ids: torch.Tensor  # [N_ce]
    ce_loss_indexes: torch.Tensor  # [N_ce] positions whose next-token prediction is scored

    @property
    def sequence_length(self) -> int:
        return sum(self.sample_lens)

    @property
    def num_samples(self) -> int:
        return len(self.sample_lens)

    def block_mask(self) -> BlockAttentionMask:
        masks = [build_sample_mask(s, m) for s, m in zip(self.split_lens, self.attn_modes, strict=True)]
        return BlockAttentionMask(list(self.sample_lens), masks)

    def dense_mask(self) -> torch.Tensor:
        """Return the boolean [T, T] mask of the whole packed sequence."""
        return self.block_mask().to_dense()

    def sample_ids(self) -> torch.Tensor:
        """Return the sample index of every token, [T]."""
        return torch.repeat_interleave(torch.arange(self.num_samples), torch.tensor(self.sample_lens))

    def to(self, device: torch.device | str) -> PackedBatch:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return PackedBatch(**values)


@dataclass
class _PackState:
    """Growing lists of one packing pass."""

    config: BagelConfig
    generator: torch.Generator | None
    position: int = 0  # next RoPE id of the current sample
    offset: int = 0  # next position in the packed sequence
    position_ids: list[int] = field(default_factory=list)
    expert_ids: list[int] = field(default_factory=list)
    split_lens: list[int] = field(default_factory=list)
    attn_modes: list[str] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)
    text_indexes: list[int] = field(default_factory=list)
    vit_tokens: list[torch.Tensor] = field(default_factory=list)
    vit_position_ids: list[torch.Tensor] = field(default_factory=list)
    vit_indexes: list[int] = field(default_factory=list)
    vit_seqlens: list[int] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)
    latent_position_ids: list[torch.Tensor] = field(default_factory=list)
    vae_indexes: list[int] = field(default_factory=list)
    latent_shapes: list[tuple[int, int]] = field(default_factory=list)
    timesteps: list[torch.Tensor] = field(default_factory=list)
    latent_noisy: list[torch.Tensor] = field(default_factory=list)
    mse_indexes: list[int] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)
    ce_indexes: list[int] = field(default_factory=list)

    def add_text_token(self, token_id: int, position_id: int) -> int:
        """Append one text or marker token and return its packed index."""
        index = self.offset
        self.text_ids.append(token_id)
        self.text_indexes.append(index)
        self.position_ids.append(position_id)
        self.expert_ids.append(self.config.llm.expert_index("text"))
        self.offset += 1
        return index

    def add_ce(self, index: int, label: int) -> None:
        self.ce_indexes.append(index)
        self.label_ids.append(label)


def _pack_text(state: _PackState, item: SequenceItem) -> None:
    # bos + ids + eos on consecutive RoPE ids. The next-token shift lives in the labels:
    # positions bos .. last id predict ids + [eos].
    tokens = [BOS_ID, *item.text_ids]
    labels = [*item.text_ids, EOS_ID]
    for token, label in zip(tokens, labels, strict=True):
        index = state.add_text_token(token, state.position)
        state.position += 1
        if item.loss:
            state.add_ce(index, label)

    eos_index = state.add_text_token(EOS_ID, state.position)
    state.position += 1
    if item.special_token_loss:
        state.add_ce(eos_index, item.special_token_label)
    state.split_lens.append(len(tokens) + 1)
    state.attn_modes.append(CAUSAL)


def _pack_vit(state: _PackState, item: SequenceItem) -> None:
    vit = state.config.vit
    _, height, width = item.image.shape
    if height % vit.patch_size or width % vit.patch_size:
        raise ValueError(
            f"ViT image size {height}x{width} is not a multiple of patch_size={vit.patch_size}"
        )
    h, w = height // vit.patch_size, width // vit.patch_size
    if max(h, w) > vit.max_patches_per_side:
        raise ValueError(
            f"ViT image of {h}x{w} patches exceeds max_patches_per_side={vit.max_patches_per_side}"
        )

    # All n + 2 tokens of the block share one RoPE id. The 2-D layout comes from the position table.
    state.add_text_token(VISION_START_ID, state.position)
    num_tokens = h * w
    state.vit_tokens.append(patchify(item.image.float(), vit.patch_size))
    state.vit_position_ids.append(grid_position_ids(h, w, vit.max_patches_per_side))
    state.vit_indexes.extend(range(state.offset, state.offset + num_tokens))
    state.vit_seqlens.append(num_tokens)
    state.position_ids.extend([state.position] * num_tokens)
    state.expert_ids.extend([state.config.llm.expert_index("vit")] * num_tokens)
    state.offset += num_tokens
    end_index = state.add_text_token(VISION_END_ID, state.position)
    if item.special_token_loss:
        state.add_ce(end_index, item.special_token_label)

    state.position += 1
    state.split_lens.append(num_tokens + 2)
    state.attn_modes.append(FULL)


def _pack_vae(state: _PackState, item: SequenceItem) -> None:
    config = state.config
    channels, height, width = item.latent.shape
    p = config.latent_patch_size
    h, w = height // p, width // p
    if channels != config.latent_channels:
        raise ValueError(f"latent has {channels} channels, expected latent_channels={config.latent_channels}")
    if h < 1 or w < 1 or max(h, w) > config.max_latent_size:
        raise ValueError(
            f"latent of {height}x{width} gives {h}x{w} tokens; "
            f"each side must be in [1, max_latent_size={config.max_latent_size}]"
        )

    state.add_text_token(VISION_START_ID, state.position)
    num_tokens = h * w
    start = state.offset
    state.latents.append(patchify(item.latent.float(), p))
    state.latent_position_ids.append(grid_position_ids(h, w, config.max_latent_size))
    state.vae_indexes.extend(range(start, start + num_tokens))
    state.latent_shapes.append((h, w))
    state.position_ids.extend([state.position] * num_tokens)
    state.expert_ids.extend([config.llm.expert_index("vae")] * num_tokens)
    state.offset += num_tokens
    end_index = state.add_text_token(VISION_END_ID, state.position)
    if item.special_token_loss:
        state.add_ce(end_index, item.special_token_label)

    # One logit-normal timestep per noisy split. A clean copy gets t = 0, so x_t = x0
    # (BAGEL stores a logit of -inf there, which the sigmoid maps to 0).
    if item.loss:
        if item.timestep is not None:
            t = torch.tensor(float(item.timestep))
        else:
            t = sample_timesteps(1, config.timestep_shift, state.generator)[0]
        state.mse_indexes.extend(range(start, start + num_tokens))
    else:
        t = torch.tensor(0.0)
    state.timesteps.append(t.expand(num_tokens))
    state.latent_noisy.append(torch.full((num_tokens,), item.loss, dtype=torch.bool))

    # A noisy split does not advance the RoPE counter, so the target, its clean copy and
    # the content after them line up on the same id.
    if not item.loss:
        state.position += 1
    state.split_lens.append(num_tokens + 2)
    state.attn_modes.append(NOISE if item.loss else FULL)


def pack_samples(
    samples: list[list[SequenceItem]],
    config: BagelConfig,
    generator: torch.Generator | None = None,
) -> PackedBatch:
    """Concatenate samples into one PackedBatch, drawing timesteps from `generator`."""
    if not samples:
        raise ValueError("pack_samples needs at least one sample")
    state = _PackState(config=config, generator=generator)
    sample_lens, split_lens, attn_modes = [], [], []
    for sample_idx, sample in enumerate(samples):
        sample_start = state.offset
        state.position = 0
        state.split_lens, state.attn_modes = [], []
        for item in sample:
            if item.dropped:
                # A dropped text item consumes no RoPE id, but a dropped image still consumes one.
                if item.type != "text":
                    state.position += 1
                continue
            {"text": _pack_text, "vit_image": _pack_vit, "vae_image": _pack_vae}[item.type](state, item)
        if state.offset == sample_start:
            raise ValueError(f"sample {sample_idx} has no tokens (all items are dropped or it is empty)")
        sample_lens.append(state.offset - sample_start)
        split_lens.append(state.split_lens)
        attn_modes.append(state.attn_modes)
    return _finish(state, sample_lens, split_lens, attn_modes)


def _cat(tensors: list[torch.Tensor], empty_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.zeros(empty_shape, dtype=dtype)


def _finish(state: _PackState, sample_lens, split_lens, attn_modes) -> PackedBatch:
    config = state.config
    long = torch.long
    return PackedBatch(
        sample_lens=sample_lens,
        split_lens=split_lens,
        attn_modes=attn_modes,
        packed_position_ids=torch.tensor(state.position_ids, dtype=long),
        packed_expert_ids=torch.tensor(state.expert_ids, dtype=long),
        packed_text_ids=torch.tensor(state.text_ids, dtype=long),
        packed_text_indexes=torch.tensor(state.text_indexes, dtype=long),
        packed_vit_tokens=_cat(state.vit_tokens, (0, 3 * config.vit.patch_size**2), torch.float32),
        packed_vit_position_ids=_cat(state.vit_position_ids, (0,), long),
        packed_vit_token_indexes=torch.tensor(state.vit_indexes, dtype=long),
        vit_token_seqlens=state.vit_seqlens,
        packed_latent=_cat(state.latents, (0, config.latent_token_dim), torch.float32),
        packed_latent_position_ids=_cat(state.latent_position_ids, (0,), long),
        packed_vae_token_indexes=torch.tensor(state.vae_indexes, dtype=long),
        latent_shapes=state.latent_shapes,
        packed_timesteps=_cat(state.timesteps, (0,), torch.float32).float(),
        packed_latent_noisy=_cat(state.latent_noisy, (0,), torch.bool),
        mse_loss_indexes=torch.tensor(state.mse_indexes, dtype=long),
        packed_label_ids=torch.tensor(state.label_ids, dtype=long),
        ce_loss_indexes=torch.tensor(state.ce_indexes, dtype=long),
    )
