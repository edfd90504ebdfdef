"""Evaluation of a trained tiny model on the synthetic shapes, and the demo's figures.

* Understanding: exact-match accuracy of greedy captions of held-out images.
* Generation: images sampled for every class prompt, decoded by the frozen
  autoencoder and judged by the rule-based classifier of ``metrics``, with and
  without classifier-free guidance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .data import CLASSES, IMAGE_SIZES, caption_for, heldout_specs
from .inference import SamplerSettings, captions, generate_images
from .metrics import caption_exact_match, classify_image, generation_accuracy
from .model import Bagel
from .tokenizer import ByteTokenizer
from .vae import LatentAutoencoder

logger = logging.getLogger(__name__)

# Images or prompts per batched inference call. Batching saves the per-call overhead of the
# tiny model, and the mask of one decoding step grows with the square of the batch.
EVAL_BATCH_SIZE = 16


def _chunks(items: list, size: int = EVAL_BATCH_SIZE) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def caption_images(model: Bagel, tokenizer: ByteTokenizer, images: list[torch.Tensor], progress: bool = False) -> list[str]:
    """Caption ``images`` [3, H, W] greedily, in batches of equal image size."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(index)
    predictions = [""] * len(images)
    batches = [batch for indexes in by_size.values() for batch in _chunks(indexes)]
    for batch in tqdm(batches, desc="captions", disable=not progress):
        for index, text in zip(batch, captions(model, tokenizer, [images[i] for i in batch], max_new_tokens=24), strict=True):
            predictions[index] = text
    return predictions


def evaluation_settings(steps: int = 20, shift: float = 2.0, cfg_text_scale: float = 3.0) -> SamplerSettings:
    """Return the sampler settings of the evaluation; ``cfg_text_scale`` 1 disables guidance."""
    # Plain text-to-image has no image condition, so s_I = 1 keeps the text scale as set.
    return SamplerSettings(
        steps=steps, shift=shift, cfg_text_scale=cfg_text_scale, cfg_img_scale=1.0, cfg_interval=(0.0, 1.0)
    )


def caption_accuracy(
    model: Bagel, tokenizer: ByteTokenizer, num_images: int = 100, seed: int = 1234, progress: bool = False
) -> tuple[float, list[tuple[str, str]]]:
    """Greedy-caption ``num_images`` held-out images; return accuracy and (reference, prediction) pairs."""
    specs = heldout_specs(num_images, seed)
    predictions = caption_images(model, tokenizer, [spec.render() for spec in specs], progress)
    references = [spec.caption for spec in specs]
    return caption_exact_match(predictions, references), list(zip(references, predictions))


@torch.no_grad()
def generate_class_images(
    model: Bagel,
    vae: LatentAutoencoder,
    tokenizer: ByteTokenizer,
    settings: SamplerSettings,
    per_class: int = 4,
    seed: int = 0,
    image_size: tuple[int, int] = IMAGE_SIZES[0],
    progress: bool = False,
) -> tuple[list[torch.Tensor], list[tuple[str, str]]]:
    """Sample ``per_class`` images for every class prompt; return decoded images [3, H, W] and their classes."""
    generator = torch.Generator().manual_seed(seed)
    latent_hw = (image_size[0] // vae.downsample, image_size[1] // vae.downsample)
    images = []
    expected = [(c, s) for c, s in CLASSES for _ in range(per_class)]
    for batch in tqdm(_chunks(expected), desc=f"generate (cfg {settings.cfg_text_scale:g})", disable=not progress):
        latents = generate_images(
            model,
            tokenizer,
            [caption_for(color, shape) for color, shape in batch],
            latent_hw,
            **asdict(settings),
            generator=generator,
        )
        images.extend(vae.decode(latents.float()).clamp(-1, 1))
    return images, expected


def evaluate(
    model: Bagel,
    vae: LatentAutoencoder,
    settings: SamplerSettings | None = None,
    num_caption_images: int = 100,
    per_class: int = 4,
    progress: bool = False,
) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """Compute the demo metrics; returns (metrics, generated images keyed "cfg" and "no_cfg").

    ``num_caption_images`` 0 skips the caption metric and ``per_class`` 0 the generation metrics.
    """
    settings = settings or evaluation_settings()
    tokenizer = ByteTokenizer()
    metrics: dict = {}

    if num_caption_images > 0:
        accuracy, pairs = caption_accuracy(model, tokenizer, num_caption_images, progress=progress)
        metrics["caption_exact_match"] = accuracy
        metrics["caption_examples"] = [{"reference": r, "prediction": p} for r, p in pairs[:8]]
        logger.info("caption exact match on %d held-out images: %.3f", num_caption_images, accuracy)

    images: dict[str, list[torch.Tensor]] = {}
    if per_class == 0:
        return metrics, images
    no_cfg = replace(settings, cfg_text_scale=1.0)
    for name, run_settings in (("cfg", settings), ("no_cfg", no_cfg)):
        generated, expected = generate_class_images(model, vae, tokenizer, run_settings, per_class, progress=progress)
        scores = generation_accuracy(generated, expected)
        # The model's own captioner as a second judge of the generated images.
        self_captions = caption_images(model, tokenizer, generated)
        scores["self_caption_exact_match"] = caption_exact_match(self_captions, [caption_for(c, s) for c, s in expected])
        metrics[f"generation_{name}"] = scores
        images[name] = generated
        logger.info("generation %s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    metrics["sampling"] = asdict(settings)
    metrics["images_per_class"] = per_class
    return metrics, images


def save_sample_grid(images: list[torch.Tensor], path: str | Path, per_class: int = 4, title: str = "") -> None:
    """Save a PNG grid: one row per class prompt, ``per_class`` samples per row, each labelled by the judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(images) // per_class
    fig, axes = plt.subplots(rows, per_class, figsize=(1.6 * per_class + 1.6, 1.4 * rows), squeeze=False)
    for index, image in enumerate(images):
        ax = axes[index // per_class][index % per_class]
        ax.imshow(((image.float().permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest")
        judgement = classify_image(image)
        ax.set_title(f"{judgement.color or '-'} {judgement.shape or '-'}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if index % per_class == 0:
            color, shape = CLASSES[index // per_class]
            ax.set_ylabel(caption_for(color, shape), fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_loss_curves(history: list[dict[str, float]], path: str | Path, pretrain_losses: list[float] = ()) -> None:
    """Save a PNG with the CE and MSE training curves, and the ViT pretraining loss if given, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [
        ("caption CE (nats/token)", [h["ce"] for h in history]),
        ("velocity MSE", [h["mse"] for h in history]),
    ]
    if pretrain_losses:
        curves.insert(0, ("ViT pretraining sigmoid loss", list(pretrain_losses)))
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2), squeeze=False)
    for ax, (label, values) in zip(axes[0], curves, strict=True):
        steps = list(range(1, len(values) + 1))
        ax.plot(steps, values, linewidth=0.6, alpha=0.5, label="per step")
        window = max(1, len(steps) // 50)
        if window > 1:
            smoothed = torch.tensor(values).unfold(0, window, 1).mean(dim=1)
            ax.plot(steps[window - 1 :], smoothed.tolist(), linewidth=1.2, label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
