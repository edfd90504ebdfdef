"""Synthetic coloured-shape data and the sequence plans BAGEL trains on.

Each image is one filled shape on black: {square, circle, triangle} x {red, green,
blue, yellow}, 12 classes, with random size and position, at 32x32, 24x32 or
32x24 pixels (the last two exercise NaViT's variable image sizes). Its caption
is "a <colour> <shape>".

A training sample is a sequence plan, a list of ``SequenceItem``:

* text-to-image: [caption, CFG-droppable] [noisy VAE latent, MSE]
* captioning:    [ViT image] [caption, CE]
* edit:          [clean VAE latent of the source, droppable] [ViT of the source, droppable]
                 [instruction "make it blue", droppable] [noisy VAE latent of the target, MSE]

Conditional dropout (BAGEL's CFG training) drops each droppable item
independently: text with probability 0.1, ViT 0.3, VAE 0.3.

Every random draw goes through an explicit ``torch.Generator``, so a seed fixes
the run. A fixed 10% of the parameter space (hashed, see ``ShapeSpec.held_out``)
is held out: training never draws it and evaluation draws only it.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import torch

from .packing import SequenceItem
from .tokenizer import ByteTokenizer
from .vae import LatentAutoencoder

SHAPES = ("square", "circle", "triangle")
COLORS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
COLOR_NAMES = tuple(COLORS)
CLASSES = tuple((color, shape) for shape in SHAPES for color in COLOR_NAMES)
IMAGE_SIZES = ((32, 32), (24, 32), (32, 24))  # (height, width) in pixels
MIN_SHAPE_SIZE, MAX_SHAPE_SIZE = 10, 18  # side of the shape's bounding box, pixels
HELD_OUT_BUCKETS = 10  # one bucket of the hashed parameter space, 10%, is held out
SPLITS = ("train", "heldout")


def caption_for(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def edit_instruction(color: str) -> str:
    return f"make it {color}"


@dataclass(frozen=True)
class ShapeSpec:
    """Every parameter of one synthetic image; ``render`` draws it deterministically."""

    shape: str
    color: str
    height: int
    width: int
    size: int  # side of the shape's bounding box, pixels
    top: int
    left: int

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLOR_NAMES}")
        if not (0 <= self.top and self.top + self.size <= self.height):
            raise ValueError(f"shape rows {self.top}..{self.top + self.size} fall outside height {self.height}")
        if not (0 <= self.left and self.left + self.size <= self.width):
            raise ValueError(f"shape columns {self.left}..{self.left + self.size} fall outside width {self.width}")

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape)

    @property
    def held_out(self) -> bool:
        # crc32 rather than hash(): Python salts str hashes per process.
        key = f"{self.shape},{self.color},{self.height},{self.width},{self.size},{self.top},{self.left}"
        return zlib.crc32(key.encode()) % HELD_OUT_BUCKETS == 0

    def render(self) -> torch.Tensor:
        """Draw the image: [3, height, width], background -1, shape in its colour, values in {-1, 1}."""
        return render_shape(self.shape, self.color, self.height, self.width, self.size, self.top, self.left)


def render_shape(shape: str, color: str, height: int, width: int, size: int, top: int, left: int) -> torch.Tensor:
    # Coordinates of pixel centres relative to the shape's bounding box, in units of its side.
    rows = (torch.arange(height, dtype=torch.float32) + 0.5 - top) / size
    cols = (torch.arange(width, dtype=torch.float32) + 0.5 - left) / size
    v, u = torch.meshgrid(rows, cols, indexing="ij")  # [H, W] each
    inside_box = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)

    if shape == "square":
        mask = inside_box
    elif shape == "circle":
        mask = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "triangle":
        # Apex at the top centre, base along the bottom edge: half of the box's area.
        mask = inside_box & ((u - 0.5).abs() <= v / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")

    rgb = torch.tensor(COLORS[color]).view(3, 1, 1) * 2 - 1  # [0, 1] -> [-1, 1]
    return torch.where(mask, rgb, torch.full_like(rgb, -1.0)).expand(3, height, width).contiguous()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def sample_spec(
    generator: torch.Generator | None,
    split: str = "train",
    color: str | None = None,
    shape: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> ShapeSpec:
    """Draw a random ``ShapeSpec`` from ``split``; ``color``, ``shape`` and ``image_size`` fix those fields."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    while True:
        # One generator call per attempt: uniform fractions, mapped to each field's range.
        u = torch.rand(6, generator=generator).tolist()

        def pick(index: int, count: int) -> int:
            return min(int(u[index] * count), count - 1)

        height, width = image_size or IMAGE_SIZES[pick(0, len(IMAGE_SIZES))]
        size = MIN_SHAPE_SIZE + pick(1, min(MAX_SHAPE_SIZE, height, width) - MIN_SHAPE_SIZE + 1)
        spec = ShapeSpec(
            shape=shape or SHAPES[pick(2, len(SHAPES))],
            color=color or COLOR_NAMES[pick(3, len(COLOR_NAMES))],
            height=height,
            width=width,
            size=size,
            top=pick(4, height - size + 1),
            left=pick(5, width - size + 1),
        )
        if spec.held_out == (split == "heldout"):
            return spec


def heldout_specs(count: int, seed: int = 1234) -> list[ShapeSpec]:
    """Draw a fixed evaluation set of ``count`` held-out specs, the same for every run with this seed."""
    generator = torch.Generator().manual_seed(seed)
    return [sample_spec(generator, split="heldout") for _ in range(count)]


def sample_images(batch_size: int, generator: torch.Generator | None, split: str = "train") -> list[torch.Tensor]:
    """Draw ``batch_size`` images of each size in ``IMAGE_SIZES``: a list of [B, 3, H, W] tensors."""
    return [
        torch.stack([sample_spec(generator, split, image_size=hw).render() for _ in range(batch_size)])
        for hw in IMAGE_SIZES
    ]


# ---- sequence plans ---------------------------------------------------------------------------


def text_to_image_plan(caption_ids: list[int], target_latent: torch.Tensor) -> list[SequenceItem]:
    return [
        SequenceItem(type="text", text_ids=caption_ids, loss=False, enable_cfg=True),
        SequenceItem(type="vae_image", latent=target_latent, loss=True, enable_cfg=False),
    ]


def captioning_plan(image: torch.Tensor, caption_ids: list[int]) -> list[SequenceItem]:
    return [
        SequenceItem(type="vit_image", image=image, loss=False, enable_cfg=False),
        SequenceItem(type="text", text_ids=caption_ids, loss=True, enable_cfg=False),
    ]


def edit_plan(
    source_image: torch.Tensor,
    source_latent: torch.Tensor,
    instruction_ids: list[int],
    target_latent: torch.Tensor,
) -> list[SequenceItem]:
    # The source enters as a clean VAE copy first, then through the ViT, as BAGEL feeds input images.
    return [
        SequenceItem(type="vae_image", latent=source_latent, loss=False, enable_cfg=True),
        SequenceItem(type="vit_image", image=source_image, loss=False, enable_cfg=True),
        SequenceItem(type="text", text_ids=instruction_ids, loss=False, enable_cfg=True),
        SequenceItem(type="vae_image", latent=target_latent, loss=True, enable_cfg=False),
    ]


@dataclass
class CfgDropout:
    """Probability of dropping each CFG-droppable item, by type, for classifier-free guidance training."""

    text: float = 0.1
    vit: float = 0.3
    vae: float = 0.3

    def __post_init__(self):
        for name in ("text", "vit", "vae"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"CfgDropout.{name} must be a probability in [0, 1], got {p}")

    def probability(self, item_type: str) -> float:
        return {"text": self.text, "vit_image": self.vit, "vae_image": self.vae}[item_type]


def apply_cfg_dropout(
    plan: list[SequenceItem], dropout: CfgDropout, generator: torch.Generator | None
) -> list[SequenceItem]:
    """Return a copy of ``plan`` in which each ``enable_cfg`` item is independently marked ``dropped``."""
    out = []
    for item in plan:
        if item.enable_cfg:
            # One draw per droppable item, whatever its probability, keeps the random stream aligned.
            draw = torch.rand((), generator=generator).item()
            if draw < dropout.probability(item.type):
                item = dataclasses.replace(item, dropped=True)
        out.append(item)
    return out


@dataclass
class TaskMix:
    """Number of samples of each task in one global batch."""

    t2i: int = 8
    vlm: int = 8
    edit: int = 0

    def __post_init__(self):
        for name in ("t2i", "vlm", "edit"):
            if getattr(self, name) < 0:
                raise ValueError(f"TaskMix.{name} must be >= 0, got {getattr(self, name)}")
        if self.total == 0:
            raise ValueError("TaskMix has no samples; set at least one of t2i, vlm, edit above 0")

    @property
    def total(self) -> int:
        return self.t2i + self.vlm + self.edit


@dataclass
class PlannedSample:
    """One sequence plan with the specs it was drawn from (the edit target in ``target``)."""

    task: str
    plan: list[SequenceItem]
    spec: ShapeSpec
    target: ShapeSpec | None = None


class ShapesTaskSampler:
    """Draws global batches of sequence plans for the synthetic shape tasks.

    The tasks are interleaved (t2i, vlm, edit, t2i, ...) so that cutting a batch
    into contiguous chunks, one per data-parallel rank, gives each rank a similar mix.
    """

    def __init__(
        self,
        vae: LatentAutoencoder,
        mix: TaskMix | None = None,
        dropout: CfgDropout | None = None,
        split: str = "train",
        tokenizer: ByteTokenizer | None = None,
    ):
        self.vae = vae
        self.mix = mix or TaskMix()
        self.dropout = dropout or CfgDropout()
        self.split = split
        self.tokenizer = tokenizer or ByteTokenizer()

    def task_order(self) -> list[str]:
        """Return the task of each sample of a batch, each task spread evenly over the batch.

        Data-parallel ranks take contiguous shares of the batch, so an even spread gives every
        rank about its proportion of each task. With 4 t2i and 24 vlm samples on 2 ranks, each
        rank trains on 2 t2i samples and so uses the generation path.
        """
        counts = {"t2i": self.mix.t2i, "vlm": self.mix.vlm, "edit": self.mix.edit}
        keyed = [
            ((index + 0.5) / count, task_rank, task)
            for task_rank, (task, count) in enumerate(counts.items())
            for index in range(count)
        ]
        return [task for _, _, task in sorted(keyed)]

    def _draw_specs(self, task: str, generator: torch.Generator | None) -> tuple[ShapeSpec, ShapeSpec | None]:
        source = sample_spec(generator, self.split)
        if task != "edit":
            return source, None
        while True:
            # Same geometry in a different colour; both must belong to this split.
            colors = [c for c in COLOR_NAMES if c != source.color]
            target = dataclasses.replace(source, color=colors[_randint(0, len(colors) - 1, generator)])
            if target.held_out == (self.split == "heldout"):
                return source, target
            source = sample_spec(generator, self.split)

    @torch.no_grad()
    def encode(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode images of mixed sizes with one autoencoder call per size; returns [C, h, w] latents."""
        latents: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
        for indexes in by_size.values():
            encoded = self.vae.encode(torch.stack([images[i] for i in indexes]))
            for i, latent in zip(indexes, encoded):
                latents[i] = latent
        return latents

    def sample_batch(self, generator: torch.Generator | None) -> list[PlannedSample]:
        tasks = self.task_order()
        specs = [self._draw_specs(task, generator) for task in tasks]

        # Render and encode every image that needs a latent in one pass per size.
        images = [source.render() for source, _ in specs]
        targets = [target.render() if target is not None else None for _, target in specs]
        to_encode = [img for task, img in zip(tasks, images) if task in ("t2i", "edit")]
        to_encode += [img for img in targets if img is not None]
        encoded = iter(self.encode(to_encode))
        source_latents = [next(encoded) if task in ("t2i", "edit") else None for task in tasks]
        target_latents = [next(encoded) if img is not None else None for img in targets]

        samples = []
        for i, task in enumerate(tasks):
            source, target = specs[i]
            caption_ids = self.tokenizer.encode(source.caption)
            if task == "t2i":
                plan = text_to_image_plan(caption_ids, source_latents[i])
            elif task == "vlm":
                plan = captioning_plan(images[i], caption_ids)
            else:
                instruction_ids = self.tokenizer.encode(edit_instruction(target.color))
                plan = edit_plan(images[i], source_latents[i], instruction_ids, target_latents[i])
            plan = apply_cfg_dropout(plan, self.dropout, generator)
            samples.append(PlannedSample(task=task, plan=plan, spec=source, target=target))
        return samples
