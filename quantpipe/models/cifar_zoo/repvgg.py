"""RepVGG-A0/A1/A2 in the zoo's CIFAR layout, and their re-parameterization.

A train-time block sums three branches — 3×3 conv+BN, 1×1 conv+BN and (where input and
output shapes agree) a bare BN — before its ReLU. All three are linear in the input, so
in eval mode they equal one 3×3 conv with bias: the deploy form is a plain stack of
3×3 convs and ReLUs, which is what should be exported and quantized (one conv per block
to calibrate instead of three branches whose sum is quantized once).

The zoo keeps `stage0` and `stage1` at stride 1 (ImageNet RepVGG has stride 2 in both),
so the spatial sizes are 32, 32, 16, 8, 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_BLOCKS_PER_STAGE = (2, 4, 14, 1)  # the "A" series
_BASE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class RepVGGConfig:
    """Width multipliers of stages 1-4; stage 0 has min(64, 64·a) channels."""

    a: float
    b: float

    @property
    def widths(self) -> tuple[int, int, int, int]:
        multipliers = (self.a, self.a, self.a, self.b)
        w = [int(base * m) for base, m in zip(_BASE_WIDTHS, multipliers, strict=True)]
        return w[0], w[1], w[2], w[3]

    @property
    def stem(self) -> int:
        return min(64, int(64 * self.a))


CONFIGS: dict[str, RepVGGConfig] = {
    "repvgg_a0": RepVGGConfig(0.75, 2.5),
    "repvgg_a1": RepVGGConfig(1.0, 2.5),
    "repvgg_a2": RepVGGConfig(1.5, 2.75),
}


class _ConvBN(nn.Sequential):
    """A conv without bias followed by BN, as the checkpoint's `conv` / `bn` children."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)


def _fold(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, BN) → (scaled kernel, bias) computing the same function in eval mode."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    """Train-time block: ReLU(3×3 conv+BN + 1×1 conv+BN [+ BN of the input])."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        # Registered first, as in the zoo, so that state_dict() lists keys in its order.
        self.rbr_identity: nn.BatchNorm2d | None = None
        if in_ch == out_ch and stride == 1:
            self.rbr_identity = nn.BatchNorm2d(in_ch)
        self.rbr_dense = _ConvBN(in_ch, out_ch, 3, stride)
        self.rbr_1x1 = _ConvBN(in_ch, out_ch, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return F.relu(out)

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3×3 kernel and bias equal to the three branches (eval-mode BN)."""
        kernel, bias = _fold(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        # A 1×1 kernel is a 3×3 kernel that is zero off-centre; with padding 0 vs 1 both
        # convs sample the same centres at any stride.
        k1, b1 = _fold(F.pad(self.rbr_1x1.conv.weight, (1, 1, 1, 1)), self.rbr_1x1.bn)
        kernel, bias = kernel + k1, bias + b1
        if self.rbr_identity is not None:
            channels = kernel.shape[0]
            identity = torch.zeros_like(kernel)
            identity[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            ki, bi = _fold(identity, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias


class FusedRepVGGBlock(nn.Module):
    """Deploy-time block: ReLU(3×3 conv with bias); `rbr_reparam` is the zoo's own name."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.rbr_reparam = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.rbr_reparam(x))


class ZooRepVGG(nn.Module):
    """`stage0` (one block), `stage1..4` (2, 4, 14, 1 blocks), GAP, `linear`."""

    def __init__(self, config: RepVGGConfig, num_classes: int, fused: bool = False) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        block: type[RepVGGBlock | FusedRepVGGBlock] = FusedRepVGGBlock if fused else RepVGGBlock
        in_ch = config.stem
        self.stage0 = block(3, in_ch, 1)
        stages = []
        for i, (width, n) in enumerate(zip(config.widths, _BLOCKS_PER_STAGE, strict=True)):
            first_stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, width, first_stride if j == 0 else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage0(x)
        out = self.stage4(self.stage3(self.stage2(self.stage1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def zoo_repvgg(name: str, num_classes: int) -> ZooRepVGG:
    """Train-time RepVGG `name` (a key of CONFIGS, e.g. "repvgg_a0")."""
    return ZooRepVGG(CONFIGS[name], num_classes)


@torch.no_grad()
def reparameterize(model: nn.Module) -> nn.Module:
    """Deploy form of a train-time ZooRepVGG: every block fused into one 3×3 conv + bias.

    Returns a new model (in eval mode, on the same device); `model` is left as it was so
    that it can still be compared against the result.
    """
    if not isinstance(model, ZooRepVGG):
        raise TypeError(f"reparameterize expects a ZooRepVGG, got {type(model).__name__}")
    with torch.device("meta"):  # skip a random init that load_state_dict overwrites
        fused = ZooRepVGG(model.config, model.num_classes, fused=True)
    fused = fused.to_empty(device=model.linear.weight.device)
    state: dict[str, torch.Tensor] = {
        "linear.weight": model.linear.weight,
        "linear.bias": model.linear.bias,
    }
    for name, module in model.named_modules():
        if isinstance(module, RepVGGBlock):
            kernel, bias = module.fused_kernel_bias()
            state[f"{name}.rbr_reparam.weight"] = kernel
            state[f"{name}.rbr_reparam.bias"] = bias
    fused.load_state_dict(state, strict=True)
    return fused.eval()
