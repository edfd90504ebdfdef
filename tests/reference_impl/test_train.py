"""Training: loss goes down, EMA formula, checkpoint round trip, DDP equals one process."""

from __future__ import annotations

import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from reference_impl.bagel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reference_impl.bagel.config import get_preset
from reference_impl.bagel.data import CfgDropout, ShapesTaskSampler, TaskMix
from reference_impl.bagel.model import Bagel
from reference_impl.bagel.packing import pack_samples
from reference_impl.bagel.train import (
    DistributedContext,
    TrainConfig,
    build_optimizer,
    default_threads,
    draw_global_batch,
    ema_update,
    shard_bounds,
    train,
    train_step,
)
from reference_impl.bagel.vae import PixelUnshuffleVAE
from reference_impl.bagel.vit_pretrain import PretrainConfig

# The lossless stand-in autoencoder has 48 latent channels.
CONFIG = get_preset("tiny", latent_channels=48)


def test_short_run_lowers_ce_and_mse():
    config = TrainConfig(
        steps=40, lr=2e-3, warmup_steps=5, mix=TaskMix(t2i=4, vlm=4), vae="pixel_unshuffle", progress=False,
        vit_pretrain=PretrainConfig(steps=5, batch_size=2),
    )
    result = train(config)
    history = result.history
    assert len(history) == 40
    assert len(result.vit_pretrain.losses) == 5
    # Each step records the learning rate it ran at: lr / 5 at the first warm-up step.
    assert history[0]["lr"] == pytest.approx(2e-3 / 5)
    assert history[4]["lr"] == pytest.approx(2e-3)
    first, last = history[:5], history[-5:]
    assert sum(h["ce"] for h in last) < 0.7 * sum(h["ce"] for h in first)
    assert sum(h["mse"] for h in last) < 0.9 * sum(h["mse"] for h in first)
    assert all(h["tokens_per_s"] > 0 for h in history)


def test_ema_update_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = torch.nn.Linear(4, 3)
    model.bias.requires_grad_(False)  # frozen parameters keep their EMA value
    ema_weight, ema_bias = ema.weight.detach().clone(), ema.bias.detach().clone()
    ema_update(ema, model, decay=0.9)
    torch.testing.assert_close(ema.weight, 0.9 * ema_weight + 0.1 * model.weight, rtol=0, atol=1e-7)
    assert torch.equal(ema.bias, ema_bias)
    ema_update(ema, model, decay=0.0)
    assert torch.equal(ema.weight, model.weight)


def test_warmup_then_constant_learning_rate():
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, TrainConfig(lr=1e-3, warmup_steps=4))
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_shard_bounds_cover_batch():
    bounds = [shard_bounds(7, rank, 3) for rank in range(3)]
    assert bounds == [(0, 3), (3, 5), (5, 7)]


def _raise_on_unpickle(*args, **kwargs):
    raise AssertionError("checkpoint loading must not unpickle")


def test_checkpoint_round_trip_bit_exact_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Bagel(CONFIG)
    ema = Bagel(CONFIG)
    vae = PixelUnshuffleVAE(shift=0.25, scale=2.0)
    save_checkpoint(tmp_path, model, vae, ema, metadata={"steps": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "ema.safetensors", "model.safetensors", "vae.safetensors",
    ]

    monkeypatch.setattr(pickle, "load", _raise_on_unpickle)
    monkeypatch.setattr(pickle, "loads", _raise_on_unpickle)
    monkeypatch.setattr(torch, "load", _raise_on_unpickle)
    for use_ema, source in ((True, ema), (False, model)):
        loaded = load_checkpoint(tmp_path, use_ema=use_ema)
        assert loaded.weights == ("ema" if use_ema else "model")
        assert loaded.config == CONFIG
        assert loaded.metadata == {"steps": 3}
        expected = source.state_dict()
        actual = loaded.model.state_dict()
        assert expected.keys() == actual.keys()
        for name in expected:
            assert torch.equal(expected[name], actual[name]), name
    assert loaded.vae.shift.item() == 0.25
    assert loaded.vae.scale.item() == 2.0


def test_checkpoint_missing_directory_raises_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoint_mismatched_weights_rejected(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path, Bagel(CONFIG), PixelUnshuffleVAE())
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("lm_head.weight")
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_checkpoint(tmp_path, use_ema=False)


# ---- DDP on two CPU processes equals one process on the global batch ----------------------------

TRAIN = TrainConfig(lr=1e-3, warmup_steps=1)


def _global_batch():
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=3, vlm=3, edit=2), CfgDropout())
    return draw_global_batch(sampler, CONFIG, torch.Generator().manual_seed(3))


def _one_step(world_size: int, rank: int) -> tuple[Bagel, dict]:
    torch.manual_seed(0)
    model = Bagel(CONFIG)
    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer, scheduler = build_optimizer(model, TRAIN)
    plans, noise = _global_batch().shard(rank, world_size)
    batch = pack_samples(plans, CONFIG)
    ctx = DistributedContext(rank, world_size)
    stats = train_step(train_model, optimizer, scheduler, batch, noise, CONFIG, TRAIN.grad_clip, ctx)
    return model, stats


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, stats = _one_step(world_size, rank)
        tensors = {f"param.{n}": p.detach().clone() for n, p in model.named_parameters()}
        tensors.update({f"grad.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        tensors["stats"] = torch.tensor([stats["ce"], stats["mse"], stats["ce_tokens"], stats["mse_tokens"]], dtype=torch.float64)
        save_file(tensors, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]

    model, stats = _one_step(world_size=1, rank=0)
    expected_stats = torch.tensor([stats["ce"], stats["mse"], stats["ce_tokens"], stats["mse_tokens"]], dtype=torch.float64)
    for result in ranks:
        torch.testing.assert_close(result["stats"], expected_stats, rtol=1e-5, atol=1e-6)
        for name, param in model.named_parameters():
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            torch.testing.assert_close(result.get(f"grad.{name}", torch.zeros_like(param)), grad, rtol=1e-4, atol=1e-7, msg=name)
            # Adam's first step is about lr * sign(g). Entries whose gradient is at rounding level
            # may move either way, so compare the parameters where the gradient is clearly nonzero.
            clear = grad.abs() > 1e-6
            torch.testing.assert_close(result[f"param.{name}"][clear], param.detach()[clear], rtol=1e-5, atol=1e-6, msg=name)


def test_share_parameter_use_detection():
    from reference_impl.bagel.train import every_share_uses_all_parameters

    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=8, vlm=8))
    assert every_share_uses_all_parameters(sampler.task_order(), 2)
    # Tasks are spread evenly, so each half of a 4 + 24 batch has 2 t2i samples.
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=4, vlm=24))
    assert every_share_uses_all_parameters(sampler.task_order(), 2)
    # A single t2i sample can only reach one of two ranks.
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=1, vlm=8))
    assert not every_share_uses_all_parameters(sampler.task_order(), 2)


def test_task_order_spreads_tasks_evenly():
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=2, vlm=6))
    assert sampler.task_order() == ["vlm", "t2i", "vlm", "vlm", "vlm", "t2i", "vlm", "vlm"]
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=2, vlm=2))
    assert sampler.task_order() == ["t2i", "vlm", "t2i", "vlm"]


def test_default_threads_split_among_ranks(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_threads(1) == 2
    assert default_threads(2) == 1
    assert default_threads(4) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_threads(1) == 1
