"""Training loop: packed mixed-task batches, AdamW, warm-up, clipping, EMA, optional DDP.

One step draws a global batch of sequence plans (text-to-image, captioning and
optionally editing), fixes every random quantity of that batch (CFG dropout,
timesteps, noise) from one seeded generator, and gives each data-parallel rank a
contiguous share. The loss is normalised by the global CE and MSE token counts,
so that after DistributedDataParallel averages the gradients the update equals
the single-process update on the whole batch.

Run on one process, or unchanged under
``torchrun --nproc_per_node=2 -m reference_impl.bagel train ...`` (gloo backend,
CPU): torchrun sets RANK and WORLD_SIZE, and this module then joins the process
group.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .config import BagelConfig, get_preset
from .data import CfgDropout, PlannedSample, ShapesTaskSampler, TaskMix, sample_images
from .flow import sample_timesteps
from .model import Bagel
from .packing import PackedBatch, SequenceItem, pack_samples
from .vae import ConvAutoencoder, LatentAutoencoder, PixelUnshuffleVAE, train_autoencoder
from .vit import VisionTransformer
from .vit_pretrain import PretrainConfig, PretrainResult, encoder_weights, pretrain_vision_encoder

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are the tiny CPU run on synthetic shapes."""

    preset: str = "tiny"
    # The whole demo then takes about 200 s on 2 idle cores. One run at 500 steps took 232 s
    # on an idle machine and 306 s on the same machine during a slow spell, too close to 5 minutes.
    steps: int = 400
    lr: float = 1e-3
    warmup_steps: int = 50  # linear warm-up from lr/warmup_steps to lr, then constant
    betas: tuple[float, float] = (0.9, 0.95)
    # BAGEL uses 1e-15. Both values give the same update unless a parameter's gradient RMS is
    # below ~1e-8: then 1e-15 still scales it to a full lr-sized step (noise, in fp32), 1e-8 damps it.
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient L2 norm
    # BAGEL uses 0.9999 over ~1e5 steps; a run of ~1e3 steps needs a horizon of ~1e2 steps.
    ema_decay: float = 0.99
    # In four demo runs of 500 steps (seeds 0 and 1, one or two threads) this mix gave held-out
    # captions of 0.96-0.98 and generated colours of 0.98-1.00 with CFG, and 0.95 and 1.00 at
    # 400 steps. With 4 text-to-image samples per step, one run gave colours of 0.94.
    mix: TaskMix = field(default_factory=lambda: TaskMix(t2i=8, vlm=24))
    dropout: CfgDropout = field(default_factory=CfgDropout)
    vae: str = "conv"  # "conv" (trained here, then frozen) or "pixel_unshuffle" (lossless, untrained)
    vae_steps: int = 300
    vae_batch_size: int = 8  # images per size per autoencoder step
    # BAGEL starts from a pretrained SigLIP encoder. From scratch, the tiny encoder learned to
    # tell circles from squares slowly: held-out captions reached 0.64 after 500 steps (4
    # text-to-image and 24 captioning samples per step). After 600 pretraining steps (about
    # 40 s on 2 cores), runs of 400-500 steps reached 0.95-0.98. 400 pretraining steps gave 0.87.
    vit_pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0
    # Intra-op threads per process. None takes the available cores, at most 2, shared among
    # torchrun ranks. With torch 2.13 on an idle 2-core machine, a step took 0.30 s on 2 threads
    # and 0.37 s on 1. On a machine busy with other jobs, OpenMP spin-waiting made 2 threads
    # 10-30x slower than 1, so pass threads=1 there.
    threads: int | None = None
    log_every: int = 100  # steps between status lines in the log
    progress: bool = True  # show a tqdm progress bar on rank 0

    def __post_init__(self):
        if isinstance(self.mix, dict):
            self.mix = TaskMix(**self.mix)
        if isinstance(self.dropout, dict):
            self.dropout = CfgDropout(**self.dropout)
        if isinstance(self.vit_pretrain, dict):
            self.vit_pretrain = PretrainConfig(**self.vit_pretrain)
        self.betas = tuple(self.betas)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if self.vae not in ("conv", "pixel_unshuffle"):
            raise ValueError(f"vae must be 'conv' or 'pixel_unshuffle', got {self.vae!r}")
        if self.vae == "conv" and self.vae_steps < 1:
            raise ValueError(f"vae_steps must be >= 1 for the conv autoencoder, got {self.vae_steps}")


# ---- distributed set-up ----------------------------------------------------------------------


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistributedContext:
    """Join the gloo process group when launched by torchrun (WORLD_SIZE > 1); otherwise run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group(backend="gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous share [start, stop) of ``num_items`` for ``rank``; shares differ by at most one item."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# ---- the global batch -----------------------------------------------------------------------


@dataclass
class GlobalBatch:
    """Sequence plans of one step with every random draw already made, so any rank can take a share."""

    samples: list[PlannedSample]
    noises: list[torch.Tensor]  # per sample, [latent tokens of its noisy and clean VAE items, p*p*C]

    def shard(self, rank: int, world_size: int) -> tuple[list[list[SequenceItem]], torch.Tensor]:
        start, stop = shard_bounds(len(self.samples), rank, world_size)
        if start == stop:
            raise ValueError(
                f"rank {rank} gets no sample from a global batch of {len(self.samples)}; "
                f"use at least {world_size} samples per step"
            )
        plans = [s.plan for s in self.samples[start:stop]]
        return plans, torch.cat(self.noises[start:stop])


def _latent_token_count(item: SequenceItem, config: BagelConfig) -> int:
    p = config.latent_patch_size
    return (item.latent.shape[1] // p) * (item.latent.shape[2] // p)


def draw_global_batch(
    sampler: ShapesTaskSampler, config: BagelConfig, generator: torch.Generator
) -> GlobalBatch:
    """Draw one global batch: plans with CFG dropout, one timestep per noisy item, and the noise."""
    samples = sampler.sample_batch(generator)
    noises = []
    for sample in samples:
        plan = []
        for item in sample.plan:
            if item.type == "vae_image" and item.loss and not item.dropped:
                t = sample_timesteps(1, config.timestep_shift, generator)[0]
                item = dataclasses.replace(item, timestep=float(t))
            plan.append(item)
        sample.plan = plan
        # Packing orders latent tokens as the items appear, so per-sample noise concatenates in order.
        num_tokens = sum(
            _latent_token_count(item, config) for item in plan if item.type == "vae_image" and not item.dropped
        )
        noises.append(torch.randn(num_tokens, config.latent_token_dim, generator=generator))
    return GlobalBatch(samples, noises)


# ---- one optimisation step ------------------------------------------------------------------


def globally_normalised_loss(
    model: nn.Module,
    batch: PackedBatch,
    noise: torch.Tensor,
    config: BagelConfig,
    ctx: DistributedContext,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one rank's share and return a loss whose DDP-averaged gradient is the global one.

    The model returns per-rank means (sum / local count). Rescaling each by
    local count * world_size / global count turns DDP's gradient average into
    sum over all ranks / global count, the normalisation of a single process.
    """
    output = model(batch, noise=noise)
    ce_sum = output.ce_loss * output.num_ce_tokens
    mse_sum = output.mse_loss * output.num_mse_tokens

    totals = torch.tensor(
        [output.num_ce_tokens, output.num_mse_tokens, ce_sum.item(), mse_sum.item(), batch.sequence_length],
        dtype=torch.float64,
    )
    if ctx.enabled:
        dist.all_reduce(totals)
    num_ce, num_mse, ce_total, mse_total, num_tokens = totals.tolist()

    loss = config.ce_weight * ce_sum * (ctx.world_size / max(num_ce, 1.0))
    loss = loss + config.mse_weight * mse_sum * (ctx.world_size / max(num_mse, 1.0))
    stats = {
        "ce": ce_total / max(num_ce, 1.0),
        "mse": mse_total / max(num_mse, 1.0),
        "ce_tokens": num_ce,
        "mse_tokens": num_mse,
        "tokens": num_tokens,
    }
    return loss, stats


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, over the trainable parameters of ``model``."""
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        if param.requires_grad:
            ema_params[name].mul_(decay).add_(param.detach(), alpha=1.0 - decay)


def build_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters with a linear warm-up to a constant learning rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    warmup = max(config.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return optimizer, scheduler


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: PackedBatch,
    noise: torch.Tensor,
    model_config: BagelConfig,
    grad_clip: float,
    ctx: DistributedContext,
) -> dict[str, float]:
    """One forward, backward, clip and AdamW step on this rank's share; returns global loss statistics."""
    loss, stats = globally_normalised_loss(model, batch, noise, model_config, ctx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    scheduler.step()
    return stats


# ---- the run --------------------------------------------------------------------------------


def prepare_autoencoder(config: TrainConfig, model_config: BagelConfig, ctx: DistributedContext) -> tuple[LatentAutoencoder, list[float]]:
    """Build the frozen autoencoder; the conv one is trained on rank 0 and broadcast to the others."""
    if config.vae == "pixel_unshuffle":
        vae = PixelUnshuffleVAE(downsample=model_config.vae_downsample)
        losses: list[float] = []
    else:
        vae = ConvAutoencoder()
        losses = []
        if ctx.is_main:
            generator = torch.Generator().manual_seed(config.seed + 1)
            losses = train_autoencoder(
                vae, sample_images, steps=config.vae_steps, batch_size=config.vae_batch_size, generator=generator
            )
        if ctx.enabled:
            for tensor in vae.state_dict().values():
                dist.broadcast(tensor, src=0)
    vae.eval().requires_grad_(False)
    if vae.latent_channels != model_config.latent_channels or vae.downsample != model_config.vae_downsample:
        raise ValueError(
            f"autoencoder gives {vae.latent_channels} channels at {vae.downsample}x downsampling, but the "
            f"model expects latent_channels={model_config.latent_channels}, vae_downsample={model_config.vae_downsample}"
        )
    return vae, losses


def prepare_vision_encoder(
    config: TrainConfig, model_config: BagelConfig, ctx: DistributedContext
) -> tuple[dict[str, torch.Tensor] | None, PretrainResult | None]:
    """Pretrain the encoder on rank 0 and broadcast the weights the model loads; (None, None) if disabled."""
    if config.vit_pretrain.steps == 0:
        return None, None
    result = None
    if ctx.is_main:
        result = pretrain_vision_encoder(model_config.vit, config.vit_pretrain, seed=config.seed + 3)
        weights = encoder_weights(result.encoder, model_config.vit)
    else:
        # Same shapes as rank 0's weights, to receive the broadcast into.
        weights = {name: torch.empty_like(t) for name, t in VisionTransformer(model_config.vit).state_dict().items()}
    if ctx.enabled:
        for name in sorted(weights):
            dist.broadcast(weights[name], src=0)
    return weights, result


def default_threads(world_size: int) -> int:
    """Return the intra-op threads per rank: the cores this process may use, at most 2, split among ranks."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        available = os.cpu_count() or 1
    return max(1, min(2, available) // world_size)


def every_share_uses_all_parameters(task_order: list[str], world_size: int) -> bool:
    """Check that every rank's share has a captioning sample (ViT, LM head) and a generation sample.

    Otherwise some parameters get no gradient on some rank, and DDP must search for them each step.
    """
    for rank in range(world_size):
        start, stop = shard_bounds(len(task_order), rank, world_size)
        tasks = set(task_order[start:stop])
        if "vlm" not in tasks or not tasks & {"t2i", "edit"}:
            return False
    return True


@dataclass
class TrainResult:
    model: Bagel
    ema: Bagel
    vae: LatentAutoencoder
    model_config: BagelConfig
    history: list[dict[str, float]]  # one entry per step
    vae_losses: list[float]
    seconds: float  # wall time of the transformer steps, excluding autoencoder and encoder pretraining
    vit_pretrain: PretrainResult | None = None  # None on ranks other than 0 and when disabled
    vit_pretrain_seconds: float = 0.0


def train(config: TrainConfig, model_config: BagelConfig | None = None) -> TrainResult:
    """Train a model on the synthetic shapes; under torchrun every rank calls this with the same arguments."""
    ctx = init_distributed()
    torch.set_num_threads(config.threads or default_threads(ctx.world_size))
    model_config = model_config or get_preset(config.preset)
    if config.vae == "pixel_unshuffle":
        model_config = BagelConfig.from_dict({**model_config.to_dict(), "latent_channels": 3 * model_config.vae_downsample**2})

    vae, vae_losses = prepare_autoencoder(config, model_config, ctx)
    pretrain_start = time.perf_counter()
    vit_weights, vit_pretrain = prepare_vision_encoder(config, model_config, ctx)
    pretrain_seconds = time.perf_counter() - pretrain_start

    torch.manual_seed(config.seed)
    model = Bagel(model_config)
    if vit_weights is not None:
        model.vit.load_state_dict(vit_weights)
    ema = copy.deepcopy(model).requires_grad_(False)
    sampler = ShapesTaskSampler(vae, config.mix, config.dropout, split="train")
    train_model: nn.Module = model
    if ctx.enabled:
        unused = not every_share_uses_all_parameters(sampler.task_order(), ctx.world_size)
        train_model = DistributedDataParallel(model, find_unused_parameters=unused)
    optimizer, scheduler = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed + 2)

    history = []
    bar = tqdm(total=config.steps, desc="train", disable=not (config.progress and ctx.is_main), dynamic_ncols=True)
    start = time.perf_counter()
    for step in range(config.steps):
        step_start = time.perf_counter()
        plans, noise = draw_global_batch(sampler, model_config, generator).shard(ctx.rank, ctx.world_size)
        batch = pack_samples(plans, model_config)
        lr = scheduler.get_last_lr()[0]  # the rate this step runs at, before train_step advances it
        stats = train_step(train_model, optimizer, scheduler, batch, noise, model_config, config.grad_clip, ctx)
        ema_update(ema, model, config.ema_decay)

        seconds = time.perf_counter() - step_start
        stats.update(step=step + 1, lr=lr, seconds=seconds, tokens_per_s=stats["tokens"] / seconds)
        history.append(stats)
        bar.set_postfix(ce=f"{stats['ce']:.3f}", mse=f"{stats['mse']:.3f}", tok_s=f"{stats['tokens_per_s']:.0f}")
        bar.update(1)
        if ctx.is_main and ((step + 1) % config.log_every == 0 or step == 0 or step + 1 == config.steps):
            logger.info(
                "step %d/%d: ce %.4f, mse %.4f, grad norm %.2f, lr %.2e, %.0f tokens/s",
                step + 1, config.steps, stats["ce"], stats["mse"], stats["grad_norm"], stats["lr"], stats["tokens_per_s"],
            )
    bar.close()
    elapsed = time.perf_counter() - start
    if not all(math.isfinite(h["ce"]) and math.isfinite(h["mse"]) for h in history):
        logger.warning("training produced a non-finite loss; lower --lr or check the data")
    return TrainResult(
        model.eval(), ema.eval(), vae, model_config, history, vae_losses, elapsed, vit_pretrain, pretrain_seconds
    )
