"""Int8 dynamic quantisation of linear layers: accuracy, coverage and size."""

from __future__ import annotations

import torch
from torch import nn

from reference_impl.bagel.config import get_preset
from reference_impl.bagel.data import CfgDropout, ShapesTaskSampler, TaskMix
from reference_impl.bagel.model import Bagel
from reference_impl.bagel.packing import pack_samples
from reference_impl.bagel.quant import Int8DynamicLinear, model_size_bytes, quantize_linear_layers, quantize_per_row
from reference_impl.bagel.vae import PixelUnshuffleVAE


def test_per_row_quantisation_error_bound():
    x = torch.randn(16, 64)
    q, scale = quantize_per_row(x)
    assert q.dtype == torch.int8
    # Rounding error is at most half a quantisation step per entry.
    assert torch.all((q.float() * scale - x).abs() <= scale / 2 + 1e-6)


def test_int8_linear_close_to_float():
    torch.manual_seed(0)
    linear = nn.Linear(128, 384)
    x = torch.randn(3, 7, 128)
    reference = linear(x)
    quantized = Int8DynamicLinear(linear)(x)
    assert quantized.shape == reference.shape
    relative = (quantized - reference).norm() / reference.norm()
    assert relative < 0.02


def test_quantize_model_replaces_linears_and_stays_close():
    # The lossless stand-in autoencoder gives 48 latent channels.
    config = get_preset("tiny", latent_channels=48)
    torch.manual_seed(0)
    model = Bagel(config).eval()
    sampler = ShapesTaskSampler(PixelUnshuffleVAE(), TaskMix(2, 2, 1), CfgDropout(0, 0, 0))
    plans = [s.plan for s in sampler.sample_batch(torch.Generator().manual_seed(0))]
    batch = pack_samples(plans, config, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(batch.packed_latent.shape, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        reference = model(batch, noise=noise)
    fp32_size = model_size_bytes(model)
    num_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantize_linear_layers(model)
    with torch.no_grad():
        quantized = model(batch, noise=noise)

    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(isinstance(m, Int8DynamicLinear) for m in model.modules()) == num_linear
    assert model_size_bytes(model) < 0.6 * fp32_size
    hidden_error = (quantized.last_hidden_state - reference.last_hidden_state).norm() / reference.last_hidden_state.norm()
    assert hidden_error < 0.05
    logit_error = (quantized.logits - reference.logits).norm() / reference.logits.norm()
    assert logit_error < 0.05
    assert abs(quantized.ce_loss.item() - reference.ce_loss.item()) < 0.02 * reference.ce_loss.item()


def test_quantize_skip_keeps_named_layers():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    quantize_linear_layers(model, skip=("2",))
    assert isinstance(model[0], Int8DynamicLinear)
    assert isinstance(model[2], nn.Linear)


def test_int8_product_matches_int32_accumulation():
    from reference_impl.bagel.quant import _int8_matmul

    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (9, 1040), generator=generator, dtype=torch.int8)
    b = torch.randint(-127, 128, (1040, 5), generator=generator, dtype=torch.int8)
    assert torch.equal(_int8_matmul(a, b), (a.to(torch.int64) @ b.to(torch.int64)).float())
