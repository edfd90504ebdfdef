"""Configuration dataclasses and presets for the minimal BAGEL model.

BAGEL ("Emerging Properties in Unified Multimodal Pretraining", arXiv 2505.14683) is a
Qwen2.5 decoder with QK-Norm whose layers are duplicated into an understanding and a
generation expert (Mixture-of-Transformers), a SigLIP ViT for image understanding and
rectified-flow VAE latents for image generation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MODALITIES = ("text", "vit", "vae")
LAYER_TYPES = ("mot", "dense")


def _require_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got {value}")


@dataclass
class LLMConfig:
    """Decoder settings. Defaults are the tiny CPU model, and `bagel-7b-mot` uses Qwen2.5-7B's."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    # None means hidden_size // num_attention_heads, as in Qwen2.5.
    head_dim: int | None = None
    vocab_size: int = 264
    # 1e4 suffices for sequences of a few hundred tokens. Qwen2.5-7B uses 1e6.
    rope_theta: float = 1e4
    rms_norm_eps: float = 1e-6
    # RMSNorm over head_dim on q and k, which BAGEL adds to Qwen2.5.
    qk_norm: bool = True
    max_position_embeddings: int = 32768
    # Standard deviation of normal-initialised weights of modules created from scratch.
    initializer_range: float = 0.02
    # "mot" duplicates every layer parameter per expert. "dense" keeps one shared copy.
    layer_type: str = "mot"
    # Expert 0 is the understanding expert that the others are copied from at init.
    experts: tuple[str, ...] = ("und", "gen")
    modality_to_expert: dict[str, str] = field(
        default_factory=lambda: {"text": "und", "vit": "und", "vae": "gen"}
    )

    def __post_init__(self) -> None:
        _require_positive(
            self, "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "vocab_size",
            "rope_theta", "rms_norm_eps", "max_position_embeddings", "initializer_range",
        )
        self.experts = tuple(self.experts)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim <= 0 or self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be positive and even for rotate-half RoPE")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type={self.layer_type!r} is invalid; expected one of {LAYER_TYPES}")
        self._validate_experts()

    def _validate_experts(self) -> None:
        if not self.experts:
            raise ValueError("experts is empty; name at least one expert, e.g. ('und',)")
        if len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts={self.experts} contains duplicate names")
        missing = [m for m in MODALITIES if m not in self.modality_to_expert]
        if missing:
            raise ValueError(
                f"modality_to_expert={self.modality_to_expert} has no expert for {missing}"
            )
        for modality, expert in self.modality_to_expert.items():
            if expert not in self.experts:
                raise ValueError(
                    f"modality_to_expert[{modality!r}]={expert!r} is not an expert; "
                    f"experts={self.experts}"
                )

    @property
    def num_experts(self) -> int:
        return len(self.experts) if self.layer_type == "mot" else 1

    def expert_index(self, modality: str) -> int:
        """Return the index of the expert that processes `modality` tokens."""
        if modality not in self.modality_to_expert:
            raise ValueError(
                f"unknown modality {modality!r}; expected one of {sorted(self.modality_to_expert)}"
            )
        if self.layer_type == "dense":
            return 0
        return self.experts.index(self.modality_to_expert[modality])


@dataclass
class ViTConfig:
    """SigLIP-style vision encoder settings (NaViT packing, learned absolute positions)."""

    patch_size: int = 8
    hidden_size: int = 64
    # Layers of the pretrained encoder. Only num_hidden_layers + select_layer + 1 are built.
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 256
    # Side M of the M x M position table. A patch at (row, col) uses id row * M + col.
    max_patches_per_side: int = 4
    # -2 drops the last layer (BAGEL's vit_select_layer) while keeping the post-LayerNorm.
    select_layer: int = -2
    layer_norm_eps: float = 1e-6
    # Standard deviation of normal-initialised weights when the encoder is trained from scratch.
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _require_positive(
            self, "initializer_range", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_patches_per_side", "layer_norm_eps",
        )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"ViT hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if not -self.num_hidden_layers <= self.select_layer < 0:
            raise ValueError(
                f"select_layer={self.select_layer} must be in "
                f"[-{self.num_hidden_layers}, -1] for num_hidden_layers={self.num_hidden_layers}"
            )

    @property
    def num_used_layers(self) -> int:
        return self.num_hidden_layers + self.select_layer + 1


@dataclass
class BagelConfig:
    """Whole-model settings: decoder, ViT, VAE latent layout and loss weights."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    # Channels C and spatial downsampling f of the (frozen) VAE that produces the latents.
    latent_channels: int = 4
    vae_downsample: int = 4
    # Each p x p x C latent patch is one token of size p * p * C.
    latent_patch_size: int = 2
    # Side of the latent position table in tokens. A token at (row, col) uses row * side + col.
    max_latent_size: int = 4
    # Shift s of training timesteps, t = s t0 / (1 + (s - 1) t0). 1.0 leaves t0 unchanged.
    timestep_shift: float = 1.0
    ce_weight: float = 1.0
    mse_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.llm, dict):
            self.llm = LLMConfig(**self.llm)
        if isinstance(self.vit, dict):
            self.vit = ViTConfig(**self.vit)
        _require_positive(
            self, "latent_channels", "vae_downsample", "latent_patch_size",
            "max_latent_size", "timestep_shift",
        )
        for name in ("ce_weight", "mse_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"BagelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.llm.hidden_size % 4 != 0:
            raise ValueError(
                f"hidden_size={self.llm.hidden_size} must be divisible by 4 for the 2-D sin-cos tables"
            )

    @property
    def latent_token_dim(self) -> int:
        return self.latent_patch_size**2 * self.latent_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token along one side (VAE downsampling times patch size)."""
        return self.vae_downsample * self.latent_patch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BagelConfig:
        data = dict(data)
        llm = dict(data.pop("llm", {}))
        if "experts" in llm:
            llm["experts"] = tuple(llm["experts"])
        return cls(llm=LLMConfig(**llm), vit=ViTConfig(**data.pop("vit", {})), **data)


def _tiny() -> BagelConfig:
    # 32 x 32 images: 4 x 4 ViT patches of 8 px, 4 x 4 latent tokens with f = 4 and p = 2.
    # A linear layer with fan-in n and weights of std s gives outputs of RMS about s * sqrt(n)
    # per unit of input RMS. BAGEL's 0.02 gives 0.02 * sqrt(3584) = 1.2 at H = 3584, but only
    # 0.23 at H = 128, so the connector's output would be about 35x smaller than the unit-scale
    # sin-cos table added to it. 0.1 restores outputs of order 1 at fan-ins 64 to 256.
    return BagelConfig(
        llm=LLMConfig(initializer_range=0.1),
        vit=ViTConfig(initializer_range=0.1),
        latent_channels=4,
        vae_downsample=4,
        latent_patch_size=2,
        max_latent_size=4,
    )


def _bagel_7b_mot() -> BagelConfig:
    # Qwen2.5-7B-Instruct with QK-Norm and MoT, SigLIP-so400m/14 at 980 px, FLUX VAE (C=16, f=8).
    return BagelConfig(
        llm=LLMConfig(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            head_dim=128,
            vocab_size=152064,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            qk_norm=True,
            max_position_embeddings=32768,
            layer_type="mot",
        ),
        vit=ViTConfig(
            patch_size=14,
            hidden_size=1152,
            num_hidden_layers=27,
            num_attention_heads=16,
            intermediate_size=4304,
            max_patches_per_side=70,
            select_layer=-2,
            layer_norm_eps=1e-6,
        ),
        latent_channels=16,
        vae_downsample=8,
        latent_patch_size=2,
        max_latent_size=64,
    )


PRESETS = {"tiny": _tiny, "bagel-7b-mot": _bagel_7b_mot}


def get_preset(name: str, **overrides) -> BagelConfig:
    """Return a fresh copy of a named configuration, with top-level fields replaced by `overrides`.

    Example: ``get_preset("tiny", latent_channels=48)`` for the lossless pixel-unshuffle VAE.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    config = PRESETS[name]()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return config
