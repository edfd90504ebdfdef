"""Int8 dynamic quantisation of ``nn.Linear`` layers for CPU inference.

Weights are stored as int8 with one symmetric scale per output channel. At run
time each input row is quantised to int8 with its own scale (hence "dynamic"),
the int8 x int8 product is accumulated, and the result is rescaled to float.
That is what BAGEL's INT8 mode does to its linear layers: it replaces every one
of them, while embeddings, norms and position tables stay in floating point.

The product of the int8 operands is computed with a float32 matmul. Integers up
to 2**24 are exact in float32, so the result equals int32 accumulation when
in_features * 127**2 < 2**24 (in_features <= 1040, true for the tiny preset).
The int8 kernels were slower here (torch 2.13 CPU, measured on 2 cores).
``torch._int_mm`` took 66 ms for a [500, 128] x [128, 384] product that float32
does in 3.6 ms. ``torch.ao.quantization.quantize_dynamic`` still works, but it
emits a DeprecationWarning announcing its move to torchao, and it ran no faster
than float32 on the tiny model's layers. The gain here is the 4x smaller weights.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

INT8_MAX = 127


def quantize_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of each row of a 2-D tensor; returns (int8 values, float scales [rows, 1])."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / INT8_MAX
    q = torch.clamp(torch.round(x / scale), -INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def _int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [K, N] -> float32 [M, N], exact while K * 127**2 < 2**24."""
    return a.float() @ b.float()


class Int8DynamicLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` with int8 weights and per-row int8 activations."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight_q, weight_scale = quantize_per_row(linear.weight.detach().float())  # [out, in], [out, 1]
        self.register_buffer("weight_int8", weight_q.t().contiguous())  # [in, out] for the GEMM
        self.register_buffer("weight_scale", weight_scale.view(1, -1))  # [1, out]
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float weight [out, in], for code that reads ``linear.weight`` (e.g. its dtype)."""
        return (self.weight_int8.t().float() * self.weight_scale.t()).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2d = x.reshape(-1, self.in_features).float()  # [N, in]
        x_q, x_scale = quantize_per_row(x2d)
        y = _int8_matmul(x_q, self.weight_int8) * x_scale * self.weight_scale  # [N, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linear_layers(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` (in place) by ``Int8DynamicLinear``; returns ``model``.

    ``skip`` lists module-name prefixes to keep in floating point. The result is
    for inference only: its int8 weights take no gradients.
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full_name = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not full_name.startswith(tuple(skip)):
                setattr(module, child_name, Int8DynamicLinear(child))
                replaced += 1
    logger.info("replaced %d nn.Linear layers with int8 dynamic linear layers", replaced)
    return model.eval()


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, counting each storage once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total
