"""Command line: ``python -m reference_impl.bagel train|caption|generate|edit|info``.

Exit codes: 0 success, 1 a run that failed (for example a corrupt checkpoint),
2 a usage error (bad option, missing file). User mistakes print one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger("reference_impl.bagel")


class UsageError(Exception):
    """A mistake in the command line or its input files; reported without a traceback, exit code 2."""


# ---- argument parsing -----------------------------------------------------------------------


def _bounded_int(minimum: int):
    """Return an argparse type that accepts integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value

    return parse


_positive_int = _bounded_int(1)
_non_negative_int = _bounded_int(0)
_grid_points = _bounded_int(2)  # an Euler grid needs its two ends


def _finite_float(minimum: float, inclusive: bool = True):
    """Return an argparse type that accepts finite floats >= ``minimum`` (> with ``inclusive=False``)."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text}")
        return value

    return parse


_positive_float = _finite_float(0.0, inclusive=False)
_non_negative_float = _finite_float(0.0)


def _image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels, e.g. 32x32, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected sides of at least 1 pixel, got {text!r}")
    return height, width


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory written by `train --out`")
    parser.add_argument(
        "--weights", choices=("ema", "model"), default="ema", help="which weights to load (default: ema, the EMA copy)"
    )
    parser.add_argument("--int8", action="store_true", help="quantise every nn.Linear to int8 for CPU inference")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampler (default: 0)")


def _add_sampling_options(parser: argparse.ArgumentParser, cfg_text: float, cfg_img: float, renorm: str) -> None:
    parser.add_argument("--steps", type=_grid_points, default=20, help="Euler grid points, at least 2; steps-1 model calls per CFG branch (default: 20)")
    parser.add_argument("--shift", type=_positive_float, default=2.0, help="timestep shift s > 0 of the sampling grid (default: 2.0)")
    parser.add_argument("--cfg-text-scale", type=float, default=cfg_text, help=f"text guidance scale s_T; 1 disables guidance (default: {cfg_text})")
    parser.add_argument("--cfg-img-scale", type=float, default=cfg_img, help=f"image guidance scale s_I (default: {cfg_img})")
    parser.add_argument(
        "--cfg-renorm-type", choices=("global", "channel", "text_channel"), default=renorm, help=f"guidance renormalisation (default: {renorm})"
    )
    parser.add_argument("--cfg-renorm-min", type=float, default=0.0, help="lower clamp of the renormalisation factor; 1 disables it (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_impl.bagel",
        description="Minimal BAGEL: train the tiny model on synthetic shapes, caption, generate, edit, count parameters.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only, and hide progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train on synthetic shapes and write checkpoint, metrics and figures")
    train.add_argument("--preset", default="tiny", help="model configuration; only 'tiny' trains on a CPU (default: tiny)")
    train.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    train.add_argument("--steps", type=_positive_int, default=None, help="optimiser steps (default: 400)")
    train.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate after warm-up (default: 1e-3)")
    train.add_argument("--warmup-steps", type=_non_negative_int, default=None, help="steps of linear learning-rate warm-up (default: 50)")
    train.add_argument("--ema-decay", type=float, default=None, help="EMA decay d per step (default: 0.99)")
    train.add_argument("--t2i", type=_non_negative_int, default=None, help="text-to-image samples per global batch (default: 8)")
    train.add_argument("--vlm", type=_non_negative_int, default=None, help="captioning samples per global batch (default: 24)")
    train.add_argument("--edit", type=_non_negative_int, default=None, help="edit samples per global batch (default: 0)")
    train.add_argument("--vae", choices=("conv", "pixel_unshuffle"), default=None, help="autoencoder (default: conv, trained first)")
    train.add_argument("--vae-steps", type=_positive_int, default=None, help="autoencoder training steps (default: 300)")
    train.add_argument("--vit-pretrain-steps", type=_non_negative_int, default=None, help="steps of SigLIP-style ViT pretraining before training; 0 trains the ViT from scratch (default: 600)")
    train.add_argument("--seed", type=int, default=None, help="seed of model init, data and noise (default: 0)")
    train.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads per process (default: the available cores, at most 2, divided among torchrun ranks)")
    train.add_argument("--eval-images-per-class", type=_non_negative_int, default=4, help="generated images per class in the evaluation; 0 skips it (default: 4)")
    train.add_argument("--eval-captions", type=_non_negative_int, default=100, help="held-out images to caption in the evaluation; 0 skips it (default: 100)")
    train.add_argument("--eval-steps", type=_grid_points, default=20, help="Euler grid points of the evaluation sampler, at least 2 (default: 20)")
    train.add_argument("--eval-shift", type=_positive_float, default=2.0, help="timestep shift of the evaluation sampler (default: 2.0)")
    train.add_argument("--eval-cfg-text-scale", type=float, default=3.0, help="text guidance scale of the guided evaluation (default: 3.0)")

    caption = commands.add_parser("caption", help="describe an image")
    _add_checkpoint_options(caption)
    caption.add_argument("--image", required=True, type=Path, help="input image file (PNG, JPEG, ...); sides must be multiples of the ViT patch size")
    caption.add_argument("--max-new-tokens", type=_positive_int, default=32, help="maximum caption length in tokens (bytes) (default: 32)")
    caption.add_argument("--temperature", type=_non_negative_float, default=0.0, help="sampling temperature; 0 is greedy (default: 0)")

    generate = commands.add_parser("generate", help="generate an image from a text prompt")
    _add_checkpoint_options(generate)
    generate.add_argument("--prompt", required=True, help='text prompt, e.g. "a red circle"')
    generate.add_argument("--out", required=True, type=Path, help="output PNG file")
    generate.add_argument("--size", type=_image_size, default=(32, 32), help="image size HEIGHTxWIDTH in pixels (default: 32x32)")
    _add_sampling_options(generate, cfg_text=3.0, cfg_img=1.0, renorm="global")

    edit = commands.add_parser("edit", help="edit an image following an instruction")
    _add_checkpoint_options(edit)
    edit.add_argument("--image", required=True, type=Path, help="input image file; sides must be multiples of the latent downsampling")
    edit.add_argument("--instruction", required=True, help='edit instruction, e.g. "make it blue"')
    edit.add_argument("--out", required=True, type=Path, help="output PNG file")
    _add_sampling_options(edit, cfg_text=3.0, cfg_img=1.5, renorm="text_channel")

    info = commands.add_parser("info", help="print parameter counts of a preset without allocating its weights")
    info.add_argument("--preset", default="bagel-7b-mot", help="configuration name (default: bagel-7b-mot)")
    info.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    return parser


# ---- helpers --------------------------------------------------------------------------------


def _load_image(path: Path):
    import torch
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UsageError(f"image {path} not found")
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from None
    pixels = torch.tensor(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0  # [3, H, W] in [-1, 1]


def _save_image(image, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).contiguous()  # [H, W, 3]
    Image.fromarray(pixels.numpy()).save(path)


def _check_multiple(height: int, width: int, factor: int, label: str) -> None:
    if height % factor or width % factor:
        raise UsageError(f"{label} {height}x{width} is not a multiple of {factor} pixels; resize or crop it")


def _check_max_side(height: int, width: int, max_side: int, label: str) -> None:
    if max(height, width) > max_side:
        raise UsageError(f"{label} {height}x{width} exceeds the model's maximum side of {max_side} pixels; resize it")


def _check_latent_size(height: int, width: int, config, label: str) -> None:
    """Reject image sizes that the VAE branch of ``config`` cannot encode or generate."""
    _check_multiple(height, width, config.latent_downsample, label)
    _check_max_side(height, width, config.max_latent_size * config.latent_downsample, label)


def _check_output_image(path: Path) -> None:
    """Reject an output path that saving would fail on, before any sampling work is done."""
    from PIL import Image

    extensions = Image.registered_extensions()
    if path.suffix.lower() not in extensions:
        raise UsageError(f"--out {path} has no image file extension; use .png, .jpg or another format Pillow writes")
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name such as {path / 'out.png'}")
    _check_output_parent(path.parent, "--out")


def _check_output_parent(directory: Path, option: str) -> None:
    """Raise UsageError if ``directory`` cannot be created because one of its parents is a file."""
    for parent in (directory, *directory.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option}: cannot create a folder under {parent}, which is a file")
            return


def _load(args):
    from .checkpoint import CheckpointError, load_checkpoint
    from .quant import quantize_linear_layers

    try:
        loaded = load_checkpoint(args.checkpoint, use_ema=args.weights == "ema")
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    if args.int8:
        quantize_linear_layers(loaded.model)
    return loaded


# ---- commands -------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from .config import get_preset
    from .model import count_parameters

    try:
        config = get_preset(args.preset)
    except ValueError as error:
        raise UsageError(str(error)) from None
    counts = count_parameters(config, device="meta")
    if args.format == "json":
        print(json.dumps({"preset": args.preset, **counts}, indent=2))
        return EXIT_OK
    print(f"preset {args.preset}: parameters counted on the meta device (no weights allocated)")
    print(f"  active (one expert + embeddings + LM head): {counts['llm_active']:>16,d}  ({counts['llm_active'] / 1e9:.2f}B)")
    print(f"  total LLM (all experts):                    {counts['llm_total']:>16,d}  ({counts['llm_total'] / 1e9:.2f}B)")
    for name, value in counts.items():
        if name not in ("llm_active", "llm_total"):
            print(f"  {name + ':':<44} {value:>16,d}")
    return EXIT_OK


def cmd_caption(args) -> int:
    from .inference import caption
    from .tokenizer import ByteTokenizer

    image = _load_image(args.image)
    loaded = _load(args)
    vit = loaded.config.vit
    _check_multiple(image.shape[1], image.shape[2], vit.patch_size, "image size")
    _check_max_side(image.shape[1], image.shape[2], vit.patch_size * vit.max_patches_per_side, "image size")
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    print(caption(loaded.model, ByteTokenizer(), image, args.max_new_tokens, args.temperature, generator))
    return EXIT_OK


def _sampling_kwargs(args) -> dict:
    return dict(
        steps=args.steps,
        shift=args.shift,
        cfg_text_scale=args.cfg_text_scale,
        cfg_img_scale=args.cfg_img_scale,
        cfg_renorm_type=args.cfg_renorm_type,
        cfg_renorm_min=args.cfg_renorm_min,
    )


def cmd_generate(args) -> int:
    import torch

    from .inference import generate_image
    from .tokenizer import ByteTokenizer

    _check_output_image(args.out)
    loaded = _load(args)
    height, width = args.size
    _check_latent_size(height, width, loaded.config, "--size")
    latent_hw = (height // loaded.vae.downsample, width // loaded.vae.downsample)
    generator = torch.Generator().manual_seed(args.seed)
    latent = generate_image(loaded.model, ByteTokenizer(), args.prompt, latent_hw, generator=generator, **_sampling_kwargs(args))
    _save_image(loaded.vae.decode(latent[None])[0], args.out)
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_edit(args) -> int:
    import torch

    from .inference import edit_image
    from .tokenizer import ByteTokenizer

    _check_output_image(args.out)
    image = _load_image(args.image)
    loaded = _load(args)
    _check_latent_size(image.shape[1], image.shape[2], loaded.config, "image size")
    vit = loaded.config.vit
    _check_multiple(image.shape[1], image.shape[2], vit.patch_size, "image size")
    _check_max_side(image.shape[1], image.shape[2], vit.patch_size * vit.max_patches_per_side, "image size")
    with torch.no_grad():
        source_latent = loaded.vae.encode(image[None])[0]
    generator = torch.Generator().manual_seed(args.seed)
    latent = edit_image(
        loaded.model, ByteTokenizer(), image, source_latent, args.instruction, generator=generator, **_sampling_kwargs(args)
    )
    _save_image(loaded.vae.decode(latent[None])[0], args.out)
    print(f"wrote {args.out}")
    return EXIT_OK


TRAIN_OPTIONS = {
    "steps": "steps", "lr": "lr", "warmup_steps": "warmup_steps", "ema_decay": "ema_decay",
    "vae": "vae", "vae_steps": "vae_steps", "seed": "seed", "threads": "threads",
}


def _train_config(args):
    from .data import TaskMix
    from .train import TrainConfig
    from .vit_pretrain import PretrainConfig

    options = {field: getattr(args, name) for name, field in TRAIN_OPTIONS.items() if getattr(args, name) is not None}
    mix = {name: getattr(args, name) for name in ("t2i", "vlm", "edit") if getattr(args, name) is not None}
    try:
        if mix:
            options["mix"] = TaskMix(**{**vars(TrainConfig().mix), **mix})
        if args.vit_pretrain_steps is not None:
            options["vit_pretrain"] = PretrainConfig(steps=args.vit_pretrain_steps)
        return TrainConfig(preset=args.preset, progress=not args.quiet, **options)
    except ValueError as error:
        raise UsageError(str(error)) from None


def cmd_train(args) -> int:
    import torch.distributed as dist

    from .checkpoint import save_checkpoint
    from .config import PRESETS
    from .evaluate import evaluate, evaluation_settings, save_loss_curves, save_sample_grid
    from .train import train

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; valid presets: {', '.join(PRESETS)}")
    if args.preset != "tiny":
        raise UsageError(f"preset {args.preset!r} is too large to train here; use --preset tiny (see `info --preset {args.preset}`)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    _check_output_parent(args.out, "--out")
    config = _train_config(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.mix.total < world_size:
        raise UsageError(
            f"a global batch of {config.mix.total} samples cannot give each of {world_size} ranks one; "
            f"raise --t2i, --vlm or --edit to at least {world_size} in total"
        )
    if config.ema_decay**config.steps > 0.05:
        logger.warning(
            "after %d steps at --ema-decay %g the EMA weights still contain %.0f%% of the initial weights, and the "
            "evaluation uses them; lower --ema-decay for short runs",
            config.steps, config.ema_decay, 100 * config.ema_decay**config.steps,
        )

    started = time.perf_counter()
    result = train(config)
    if dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return EXIT_OK

    # Checkpoint, evaluation and figures on rank 0 only.
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    last = result.history[-1]
    summary = {
        "steps": config.steps,
        "train_seconds": round(result.seconds, 1),
        "final_ce": last["ce"],
        "final_mse": last["mse"],
        "mean_tokens_per_s": sum(h["tokens"] for h in result.history) / result.seconds,
        "autoencoder_final_mse": result.vae_losses[-1] if result.vae_losses else None,
    }
    pretrain_losses = result.vit_pretrain.losses if result.vit_pretrain else []
    if result.vit_pretrain:
        summary.update(
            vit_pretrain_steps=config.vit_pretrain.steps,
            vit_pretrain_seconds=round(result.vit_pretrain_seconds, 1),
            vit_pretrain_final_loss=pretrain_losses[-1],
            vit_zero_shot_accuracy=result.vit_pretrain.zero_shot_accuracy,
        )
    save_checkpoint(out, result.model, result.vae, result.ema, metadata={"train_config": _jsonable(config), **summary})
    (out / "history.json").write_text(json.dumps(result.history) + "\n")
    save_loss_curves(result.history, out / "loss_curves.png", pretrain_losses)

    metrics = {"train": summary, "weights": "ema"}
    if args.eval_captions or args.eval_images_per_class:
        eval_start = time.perf_counter()
        settings = evaluation_settings(args.eval_steps, args.eval_shift, args.eval_cfg_text_scale)
        scores, images = evaluate(
            result.ema, result.vae, settings, args.eval_captions, args.eval_images_per_class, progress=not args.quiet
        )
        metrics.update(scores)
        metrics["eval_seconds"] = round(time.perf_counter() - eval_start, 1)
        for name, generated in images.items():
            if generated:
                title = f"{name}: s_T={settings.cfg_text_scale if name == 'cfg' else 1.0:g}, {settings.steps} steps, shift {settings.shift:g}"
                save_sample_grid(generated, out / f"samples_{name}.png", args.eval_images_per_class, title)
    # The wall time covers autoencoder and ViT pretraining, training, evaluation and writing the outputs.
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _print_summary(metrics, out)
    return EXIT_OK


def _jsonable(config) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config), default=str))


def _print_summary(metrics: dict, out: Path) -> None:
    train = metrics["train"]
    if "vit_pretrain_steps" in train:
        print(f"pretrained the ViT for {train['vit_pretrain_steps']} steps in {train['vit_pretrain_seconds']:.0f} s; "
              f"zero-shot accuracy (held-out) {train['vit_zero_shot_accuracy']:.1%}")
    print(f"trained {train['steps']} steps in {train['train_seconds']:.0f} s, {train['mean_tokens_per_s']:.0f} tokens/s; "
          f"final CE {train['final_ce']:.4f}, MSE {train['final_mse']:.4f}")
    if "caption_exact_match" in metrics:
        print(f"caption exact match (held-out): {metrics['caption_exact_match']:.1%}")
    for name in ("generation_cfg", "generation_no_cfg"):
        if name in metrics:
            g = metrics[name]
            print(f"{name}: colour {g['color_accuracy']:.1%}, shape {g['shape_accuracy']:.1%}, "
                  f"both {g['class_accuracy']:.1%}, self-caption {g['self_caption_exact_match']:.1%}")
    print(f"wrote checkpoint, metrics.json and figures to {out} ({metrics['wall_seconds']:.0f} s in all)")


COMMANDS = {"train": cmd_train, "caption": cmd_caption, "generate": cmd_generate, "edit": cmd_edit, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with code 2 and a usage message on bad options
    level = logging.INFO
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    try:
        code = COMMANDS[args.command](args)
    except UsageError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    logger.debug("%s finished in %.1f s", args.command, time.perf_counter() - started)
    return code
