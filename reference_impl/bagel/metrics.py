"""Fixed, rule-based judges for the synthetic shape task.

``classify_image`` reads the colour and shape of a generated image without any
learned component, so the generation metrics cannot be gamed by the model:

* foreground = pixels whose brightest channel exceeds ``FOREGROUND_THRESHOLD``;
* colour = argmax of the mean foreground RGB, except that red and green both
  high with blue low is yellow;
* shape = fraction of the foreground's bounding box that is foreground: a square
  fills it (1.0), a circle fills pi/4 = 0.785 of it, a triangle 0.5. The cut
  points are the midpoints between those ideal values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FOREGROUND_THRESHOLD = 0.5  # on the brightest channel, in [0, 1] pixel units
MIN_FOREGROUND_PIXELS = 8  # fewer than this is "no shape drawn"
SQUARE_FILL, CIRCLE_FILL, TRIANGLE_FILL = 1.0, math.pi / 4, 0.5
SQUARE_CUT = (SQUARE_FILL + CIRCLE_FILL) / 2  # 0.89
TRIANGLE_CUT = (CIRCLE_FILL + TRIANGLE_FILL) / 2  # 0.64
YELLOW_MIN_RATIO = 0.6  # min(R, G) / max(R, G) above this, with blue low, is yellow


@dataclass
class ImageJudgement:
    color: str | None  # None when no foreground was found
    shape: str | None
    fill_ratio: float
    foreground_pixels: int


def classify_color(mean_rgb: torch.Tensor) -> str:
    """Name the colour of a mean RGB vector in [0, 1]."""
    r, g, b = (float(c) for c in mean_rgb)
    if min(r, g) >= YELLOW_MIN_RATIO * max(r, g) and b < 0.5 * min(r, g):
        return "yellow"
    return ("red", "green", "blue")[int(torch.argmax(mean_rgb))]


def classify_shape(fill_ratio: float) -> str:
    if fill_ratio >= SQUARE_CUT:
        return "square"
    if fill_ratio >= TRIANGLE_CUT:
        return "circle"
    return "triangle"


def classify_image(image: torch.Tensor) -> ImageJudgement:
    """Judge colour and shape of one image [3, H, W] with pixels in [-1, 1]."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape [3, H, W], got {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(-1, 1) + 1) / 2  # [3, H, W] in [0, 1]
    foreground = pixels.max(dim=0).values > FOREGROUND_THRESHOLD  # [H, W]
    count = int(foreground.sum())
    if count < MIN_FOREGROUND_PIXELS:
        return ImageJudgement(color=None, shape=None, fill_ratio=0.0, foreground_pixels=count)

    mean_rgb = pixels[:, foreground].mean(dim=1)  # [3]
    rows = torch.nonzero(foreground.any(dim=1)).flatten()
    cols = torch.nonzero(foreground.any(dim=0)).flatten()
    box_area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    fill_ratio = count / float(box_area)
    return ImageJudgement(
        color=classify_color(mean_rgb),
        shape=classify_shape(fill_ratio),
        fill_ratio=fill_ratio,
        foreground_pixels=count,
    )


def caption_exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after stripping surrounding whitespace."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no captions to score")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return hits / len(references)


def generation_accuracy(
    images: list[torch.Tensor], expected: list[tuple[str, str]]
) -> dict[str, float]:
    """Colour, shape and joint accuracy of ``images`` against ``expected`` (colour, shape) pairs."""
    if len(images) != len(expected):
        raise ValueError(f"{len(images)} images for {len(expected)} expected classes")
    judgements = [classify_image(img) for img in images]
    n = len(images)
    color_hits = sum(j.color == c for j, (c, _) in zip(judgements, expected))
    shape_hits = sum(j.shape == s for j, (_, s) in zip(judgements, expected))
    both_hits = sum(j.color == c and j.shape == s for j, (c, s) in zip(judgements, expected))
    return {"color_accuracy": color_hits / n, "shape_accuracy": shape_hits / n, "class_accuracy": both_hits / n}
