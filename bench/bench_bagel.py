"""Speed and size ratios of the minimal BAGEL, each against a baseline measured in the same run.

    python bench/bench_bagel.py [--threads 1] [--repeats 5] [--checkpoint DIR]

Prints one line per comparison:

1. packed forward of samples of mixed lengths vs the same samples padded to the longest;
2. decoding 256 tokens with the KV cache vs recomputing the whole sequence at every step;
3. MoT forward vs a dense model of the same active size, per token;
4. training throughput (tokens/s) and achieved FLOP/s as a fraction of a plain torch.matmul;
5. int8 vs fp32: model size, forward time and agreement (caption accuracy with --checkpoint).

Times are medians over --repeats runs on the tiny preset. Numbers depend on the machine and on
other load; only the ratios within one run are meant to be compared.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_impl.bagel.config import get_preset  # noqa: E402
from reference_impl.bagel.data import CfgDropout, ShapesTaskSampler, TaskMix  # noqa: E402
from reference_impl.bagel.model import Bagel  # noqa: E402
from reference_impl.bagel.mot import KVCache  # noqa: E402
from reference_impl.bagel.packing import SequenceItem, pack_samples  # noqa: E402
from reference_impl.bagel.quant import model_size_bytes, quantize_linear_layers  # noqa: E402
from reference_impl.bagel.tokenizer import PAD_ID  # noqa: E402
from reference_impl.bagel.train import TrainConfig, build_optimizer, draw_global_batch, train_step, DistributedContext  # noqa: E402
from reference_impl.bagel.vae import PixelUnshuffleVAE  # noqa: E402

CONFIG = get_preset("tiny", latent_channels=48)  # the lossless stand-in autoencoder's channels


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mixed_length_samples(generator: torch.Generator) -> list[list[SequenceItem]]:
    """16 text samples of 10-200 tokens plus 8 image samples: lengths typical of packed pretraining data."""
    samples = []
    for _ in range(16):
        length = int(torch.randint(10, 200, (1,), generator=generator))
        ids = torch.randint(0, 256, (length,), generator=generator).tolist()
        samples.append([SequenceItem(type="text", text_ids=ids, loss=True)])
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(t2i=4, vlm=4), CfgDropout(0, 0, 0))
    samples += [s.plan for s in sampler.sample_batch(generator)]
    return samples


def bench_packing(model: Bagel, repeats: int) -> None:
    samples = mixed_length_samples(torch.Generator().manual_seed(0))
    packed = pack_samples(samples, CONFIG, torch.Generator().manual_seed(1))
    longest = max(packed.sample_lens)
    # Pad every sample to the longest with a trailing text item of pad tokens (bos + pads + eos).
    padded_samples = []
    for sample, length in zip(samples, packed.sample_lens):
        pad = longest - length
        extra = [SequenceItem(type="text", text_ids=[PAD_ID] * (pad - 2))] if pad >= 3 else []
        padded_samples.append(sample + extra)
    padded = pack_samples(padded_samples, CONFIG, torch.Generator().manual_seed(1))

    with torch.no_grad():
        t_packed = median_seconds(lambda: model.run_decoder(packed, generator=torch.Generator().manual_seed(2)), repeats)
        t_padded = median_seconds(lambda: model.run_decoder(padded, generator=torch.Generator().manual_seed(2)), repeats)
    print(
        f"packing: {len(samples)} samples, {packed.sequence_length} real tokens vs {padded.sequence_length} padded; "
        f"packed forward {t_packed * 1e3:.1f} ms, padded {t_padded * 1e3:.1f} ms, speed-up x{t_padded / t_packed:.2f}"
    )


def bench_kv_cache(model: Bagel, repeats: int, new_tokens: int = 256) -> None:
    decoder = model.language_model
    und = CONFIG.llm.expert_index("text")
    tokens = torch.randint(0, 256, (new_tokens,), generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def cached() -> None:
        cache = KVCache()
        for i in range(new_tokens):
            out = decoder(model.embed_text(tokens[i : i + 1]), torch.tensor([i]), torch.tensor([und]), None, cache)
            cache = cache.extend(out.key_values)
            model.lm_head(out.last_hidden_state[-1])

    @torch.no_grad()
    def recompute() -> None:
        for i in range(new_tokens):
            length = i + 1
            mask = torch.ones(length, length, dtype=torch.bool).tril()
            out = decoder(model.embed_text(tokens[:length]), torch.arange(length), torch.full((length,), und), mask)
            model.lm_head(out.last_hidden_state[-1])

    t_cached = median_seconds(cached, max(1, repeats // 2))
    t_recompute = median_seconds(recompute, max(1, repeats // 2))
    print(
        f"kv cache: {new_tokens} tokens decoded in {t_cached * 1e3:.0f} ms cached vs {t_recompute * 1e3:.0f} ms "
        f"recomputed, speed-up x{t_recompute / t_cached:.2f}"
    )


def bench_mot_vs_dense(repeats: int) -> None:
    samples = [s.plan for s in ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(8, 8), CfgDropout(0, 0, 0)).sample_batch(
        torch.Generator().manual_seed(0)
    )]
    dense_config = copy.deepcopy(CONFIG)
    dense_config.llm.layer_type = "dense"
    results = {}
    for name, config in (("mot", CONFIG), ("dense", dense_config)):
        torch.manual_seed(0)
        model = Bagel(config).eval()
        batch = pack_samples(samples, config, torch.Generator().manual_seed(1))
        with torch.no_grad():
            seconds = median_seconds(lambda: model.run_decoder(batch, generator=torch.Generator().manual_seed(2)), repeats)
        results[name] = seconds / batch.sequence_length
    print(
        f"MoT vs dense (same active size): {results['mot'] * 1e6:.1f} vs {results['dense'] * 1e6:.1f} us/token, "
        f"MoT costs x{results['mot'] / results['dense']:.2f} per token"
    )


def matmul_flops_per_second(repeats: int, n: int = 512) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = median_seconds(lambda: torch.matmul(a, b), repeats * 4)
    return 2 * n**3 / seconds


def bench_training(repeats: int) -> None:
    torch.manual_seed(0)
    model = Bagel(CONFIG)
    train_config = TrainConfig()
    optimizer, scheduler = build_optimizer(model, train_config)
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(8, 8), CfgDropout())
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(repeats + 1):
        plans, noise = draw_global_batch(sampler, CONFIG, generator).shard(0, 1)
        batches.append((pack_samples(plans, CONFIG), noise))
    iterator = iter(batches)

    def step() -> None:
        batch, noise = next(iterator)
        train_step(model, optimizer, scheduler, batch, noise, CONFIG, 1.0, DistributedContext())

    seconds = median_seconds(step, repeats)
    tokens = statistics.mean(b.sequence_length for b, _ in batches)
    # Dense estimate: 6 FLOPs per parameter used by a token (forward + backward), one expert per token.
    active = sum(p.numel() for n, p in model.named_parameters() if ".experts.1." not in n and "norm.1" not in n)
    flops = 6 * active * tokens
    peak = matmul_flops_per_second(repeats)
    print(
        f"training: {tokens:.0f} tokens/step in {seconds * 1e3:.0f} ms = {tokens / seconds:.0f} tokens/s; "
        f"~{flops / seconds / 1e9:.2f} GFLOP/s achieved (6 x {active / 1e6:.2f}M active params x tokens) vs "
        f"{peak / 1e9:.1f} GFLOP/s for a 512x512 torch.matmul: {flops / seconds / peak:.1%}"
    )


def bench_int8(repeats: int, checkpoint: Path | None) -> None:
    if checkpoint is not None:
        from reference_impl.bagel.checkpoint import load_checkpoint
        from reference_impl.bagel.evaluate import caption_accuracy
        from reference_impl.bagel.tokenizer import ByteTokenizer

        fp32 = load_checkpoint(checkpoint).model
        config = fp32.config
    else:
        torch.manual_seed(0)
        fp32, config = Bagel(CONFIG).eval(), CONFIG
    int8 = quantize_linear_layers(copy.deepcopy(fp32))
    samples = [s.plan for s in ShapesTaskSampler(
        PixelUnshuffleVAE() if config.latent_channels == 48 else _identity_latents(config), TaskMix(8, 8), CfgDropout(0, 0, 0)
    ).sample_batch(torch.Generator().manual_seed(0))]
    batch = pack_samples(samples, config, torch.Generator().manual_seed(1))
    noise = torch.randn(batch.packed_latent.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out32, out8 = fp32(batch, noise=noise), int8(batch, noise=noise)
        t32 = median_seconds(lambda: fp32(batch, noise=noise), repeats)
        t8 = median_seconds(lambda: int8(batch, noise=noise), repeats)
    error = ((out8.last_hidden_state - out32.last_hidden_state).norm() / out32.last_hidden_state.norm()).item()
    line = (
        f"int8: size {model_size_bytes(int8) / 1e6:.2f} MB vs {model_size_bytes(fp32) / 1e6:.2f} MB fp32 "
        f"(x{model_size_bytes(fp32) / model_size_bytes(int8):.2f} smaller); forward {t8 * 1e3:.0f} vs {t32 * 1e3:.0f} ms "
        f"(x{t32 / t8:.2f}); hidden-state relative error {error:.4f}; CE {out8.ce_loss.item():.4f} vs {out32.ce_loss.item():.4f}"
    )
    if checkpoint is not None:
        tokenizer = ByteTokenizer()
        acc32, _ = caption_accuracy(fp32, tokenizer)
        acc8, _ = caption_accuracy(int8, tokenizer)
        line += f"; caption exact match {acc8:.1%} int8 vs {acc32:.1%} fp32"
    print(line)


def _identity_latents(config):
    # A trained checkpoint expects its own autoencoder's channel count; random latents of that shape
    # exercise the same linear layers for the size and error comparison.
    class RandomLatents(PixelUnshuffleVAE):
        def encode(self, images):
            b, _, h, w = images.shape
            return torch.randn(b, config.latent_channels, h // config.vae_downsample, w // config.vae_downsample)

    return RandomLatents(downsample=config.vae_downsample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (default: 5)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained checkpoint for the int8 caption accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} runs")

    torch.manual_seed(0)
    model = Bagel(CONFIG).eval()
    bench_packing(model, args.repeats)
    bench_kv_cache(model, args.repeats)
    bench_mot_vs_dense(args.repeats)
    bench_training(args.repeats)
    bench_int8(args.repeats, args.checkpoint)


if __name__ == "__main__":
    main()
