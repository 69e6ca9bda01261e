"""Fake quantization with straight-through gradients, matching quantpipe's Q/DQ models.

The values are exactly what the exported Q/DQ graph computes (quantpipe/quantize/qdq.py):
- weights: symmetric per output channel, scale = max|w| / (2^(b−1)−1), codes clipped to
  ±(2^(b−1)−1), round half to even; 8-bit weights use [−127, 127];
- activations: per tensor, scale = amax / (2^(A−1)−1); at 8 bits codes in [−128, 127], as
  ONNX's QuantizeLinear saturates; below 8 bits the tensor is clipped to ±amax first, so the
  codes stay within ±(2^(A−1)−1).

PyTorch's own fake-quantize kernels do the arithmetic (round half to even, the clipped
straight-through gradient: zero outside the representable range). They replaced an
elementwise version that made a QAT epoch of fmnist-cnn take 194 s (6.5× its plain
training epoch) on the 2-core Xeon. Activation ranges can be learned (LSQ's gradient of the
scale, PyTorch's learnable fake-quantize kernel), so that fine-tuning can undo a calibrator
that clipped too much.
"""

from __future__ import annotations

import torch

from quantpipe.quantize.bits import qmax

Tensor = torch.Tensor


def weight_scales(w: Tensor, axis: int | None, bits: int) -> Tensor:
    """Per-channel (1-D) or per-tensor (0-D) symmetric scales; a channel of zeros gets
    scale 1, as the exported weights do."""
    detached = w.detach()
    if axis is None:
        amax = detached.abs().max()
    else:
        axis = axis % w.dim()
        amax = detached.abs().amax(dim=[d for d in range(w.dim()) if d != axis])
    scales = (amax / qmax(bits)).float()
    # Zero, or underflowed to zero from a subnormal amax: scale 1, as the export does.
    return torch.where(scales > 0, scales, torch.ones_like(scales))


def fake_quant_weight(w: Tensor, axis: int | None, bits: int) -> Tensor:
    limit = qmax(bits)
    scales = weight_scales(w, axis, bits)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(w, float(scales), 0, -limit, limit)
    zero = torch.zeros(scales.shape, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scales, zero, axis % w.dim(), -limit, limit)


def fake_quant_activation(x: Tensor, amax: float, bits: int) -> Tensor:
    if amax <= 0:
        amax = 1.0  # a tensor that was always 0: the exported scale is 1/127 likewise
    low, high = activation_limits(bits)
    scale = float(torch.tensor(amax / high, dtype=torch.float32))  # the exported float32
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, low, high)


def activation_limits(bits: int) -> tuple[int, int]:
    """The code range of an activation: INT8 Q saturates at −128; lower bits clip first."""
    limit = qmax(bits)
    return (-limit - 1 if bits == 8 else -limit), limit


def fake_quant_learned(x: Tensor, amax: Tensor, bits: int) -> Tensor:
    """Per-tensor fake quantization whose range `amax` (a 1-element Parameter) is trained
    with LSQ's gradient, without its 1/sqrt(numel · qmax) scale (see qat/train.py)."""
    low, high = activation_limits(bits)
    scale = torch.clamp(amax, min=1e-8) / high
    zero = torch.zeros(1, dtype=x.dtype, device=x.device)
    grad_factor = 1.0
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, low, high, grad_factor)
