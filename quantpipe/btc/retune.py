"""Affine re-tuning after coding: fit the uncoded parameters (BatchNorm scale/shift and
layer biases) so that the coded model's outputs match the FP32 model's on calibration
data (distillation, KL divergence on the logits).

Why: at 4–5 effective bits the coding noise shifts every channel's output statistics;
BN scale/shift can absorb much of that, and they are stored uncoded (FP32) in the
container anyway, so the container still restores exactly the evaluated model.
Measured on cifar10-resnet20 at 4.5 effective bits (B = 128): test drop 1.32 points
without, 0.02 with 300 steps (JPEG CIFAR-10, 4,000 test images).

The steps stop early once the divergence stops falling: a fifth of the calibration samples
(at most 512) is held out of the steps, and the learning rate falls from ``lr`` to near 0
over each cycle of ``check_every`` steps (cosine, restarting at the peak). At the end of
each cycle the held-out KL is measured; after ``patience`` cycles whose fall is less than
``min_gain`` of the whole fall so far, or once it is within ``kl_tolerance``, the best
parameters seen are restored. ``steps`` is the most that run.

Why cycles: a check at the end of a cycle measures parameters at rest, not mid-step, so
short cycles decide as well as long runs did. Measured at 4.5 bits (held-out KL, nats):
the old constant lr 3e-3 with a check every 25 steps ran 50 steps on ResNet-20 (0.089 →
0.043), 100 on ResNet-32 and 75 on ResNet-56; cycles of 15 steps at lr 1e-3 stop after 45
(0.036), 30 (0.059 → 0.024) and 30. The test top-1 drop against FP32 (JPEG CIFAR-10, 4,000
images) over the settings tried (lr 1e-3 to 3e-3, cycles of 15 to 25 steps) ranged from
−0.40 to +0.35 points on ResNet-20 and −0.28 to +0.60 on ResNet-32, in no order of the
KL: at equal KL, half a point is the noise of 4,000 images. The chosen setting had the
least KL per step; its drops were +0.35 and +0.05.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantpipe.errors import QuantpipeError
from quantpipe.progress import track

_KL_FLOOR = 1e-6  # nats: below this a fall in KL is rounding, not a gain
_MAX_HELD_OUT = 512  # samples: enough for a stable KL; each check is a forward pass of them
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class RetuneConfig:
    steps: int = 300  # the most steps; fewer run when the held-out KL stops falling
    lr: float = 1e-3  # the peak of each cycle
    batch_size: int = 128
    seed: int = 0
    samples: int = 2048  # the first calibration samples used (their FP32 targets are computed)
    device: str = "cpu"  # where the steps run (torch device name)
    check_every: int = 15  # steps between checks: one cosine cycle of the learning rate
    patience: int = 1
    # A check counts as a gain when the KL fell by at least this share of its whole fall
    # since the start: returns that small are not worth another check_every steps.
    min_gain: float = 0.1
    # Nats: a held-out KL below this is the FP32 model's output for practical
    # purposes (by Pinsker, an average total variation under 2.3 %), so re-tuning ends
    # there, or does not start (0: off). The trained ResNets lose 0.06-0.09 at 4.5 bits.
    kl_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        counts = (self.batch_size, self.samples, self.check_every)
        if min(self.steps, self.kl_tolerance) < 0 or min(counts) < 1 or not 0 < self.lr < 1:
            raise QuantpipeError(
                f"re-tuning needs steps and KL tolerance ≥ 0, batch size, samples and check "
                f"interval ≥ 1, 0 < lr < 1; got {self.steps}, {self.kl_tolerance}, "
                f"{self.batch_size}, {self.samples}, {self.check_every}, {self.lr}"
            )


def affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Norm-layer scale/shift and every bias: the parameters BTC leaves uncoded."""
    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, _NORMS):
            params += [p for p in (module.weight, module.bias) if p is not None]
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, nn.Parameter):
            params.append(module.bias)
    return params


@dataclass(frozen=True)
class Retuned:
    model: nn.Module
    steps: int  # the steps that ran (fewer than RetuneConfig.steps when it stopped early)


def fp32_targets(logits: np.ndarray) -> torch.Tensor:
    """The distillation targets: the FP32 model's log-probabilities over the class axis (1)."""
    return F.log_softmax(torch.from_numpy(np.ascontiguousarray(logits)).float(), 1)


def retune_affine(
    coded: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cfg: RetuneConfig,
    progress: bool = False,
) -> Retuned:
    """A copy of `coded` whose affine parameters minimise KL(FP32 ‖ coded), the FP32
    model's log-probabilities on `inputs` being `targets` (computed once by the caller for
    every candidate). The copy runs on `cfg.device` and comes back on the CPU."""
    student = copy.deepcopy(coded).eval().to(cfg.device)  # eval: running statistics stay
    params = affine_parameters(student)
    if cfg.steps == 0 or not params:
        return Retuned(student.cpu(), 0)
    inputs, targets = inputs[: cfg.samples].to(cfg.device), targets[: cfg.samples].to(cfg.device)
    layout = _faster_layout(student, inputs)
    inputs = inputs.contiguous(memory_format=layout)
    held = min(len(inputs) // 5, _MAX_HELD_OUT) if len(inputs) >= 10 else 0  # else all steps
    fit, judge = slice(0, len(inputs) - held), slice(len(inputs) - held, len(inputs))
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    stop = _EarlyStop(params, cfg, lambda: _kl(student, inputs[judge], targets[judge]))
    if held and stop.within_tolerance(stop.start):
        return Retuned(_finished(student), 0)
    steps = 0
    for steps in track(range(1, cfg.steps + 1), "btc re-tune", progress, unit="step"):
        for group in opt.param_groups:
            group["lr"] = _cosine_cycle_lr(cfg, steps)
        idx = torch.randint(0, len(inputs) - held, (cfg.batch_size,), generator=generator)
        idx = idx.to(cfg.device)
        out = F.log_softmax(student(inputs[fit][idx]), 1)  # indexing keeps the layout
        loss = F.kl_div(out, targets[fit][idx], log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if held and steps % cfg.check_every == 0 and stop.should_stop():
            break
    if held:
        stop.restore_best()
    return Retuned(_finished(student), steps)


def _finished(student: nn.Module) -> nn.Module:
    for p in student.parameters():
        p.requires_grad_(False)
    student.to(memory_format=torch.contiguous_format)  # what export and coding expect
    return student.eval().cpu()


def _cosine_cycle_lr(cfg: RetuneConfig, step: int) -> float:
    """The learning rate of `step` (from 1): from `cfg.lr` down to near 0 over each cycle of
    `check_every` steps, then back up (warm restarts)."""
    position = (step - 1) % cfg.check_every / cfg.check_every
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * position))


def _faster_layout(model: nn.Module, inputs: torch.Tensor) -> torch.memory_format:
    """Channels-last for a model of images on the CPU, when it gives the same outputs (it
    switches `model` in place); else the default layout.

    Why: oneDNN's convolutions run re-tuning's steps (input gradients only) faster in
    channels-last: the trained ResNet-56 at batch 128 took 0.80-0.86 s a step against
    0.88-0.96 s (30 steps, two rounds, 2 AMD EPYC cores). A model whose forward needs the
    default layout (a ``.view`` of a feature map, say) fails or differs in channels-last
    and keeps it.
    """
    if inputs.dim() != 4 or inputs.device.type != "cpu" or len(inputs) == 0:
        return torch.contiguous_format
    sample = inputs[:8]
    with torch.no_grad():
        expected = model(sample)
        try:
            model.to(memory_format=torch.channels_last)
            got = model(sample.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            got = None
    if not _same_outputs(got, expected):
        model.to(memory_format=torch.contiguous_format)
        return torch.contiguous_format
    return torch.channels_last


def _same_outputs(got: object, expected: object) -> bool:
    """Equal up to float re-association (outputs of two memory layouts)."""
    if not (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)):
        return False
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale + 1e-6)


def _kl(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        out = torch.cat([F.log_softmax(model(b), 1) for b in inputs.split(256)])
    return float(F.kl_div(out, targets, log_target=True, reduction="batchmean"))


class _EarlyStop:
    """Tracks the held-out KL and the best parameters seen (the start counts).

    Until a first gain is seen one more miss is allowed: a noisy first check (the KL a
    little above the start after one cycle) must not end a re-tuning that has barely begun.
    """

    def __init__(
        self, params: list[nn.Parameter], cfg: RetuneConfig, measure: Callable[[], float]
    ) -> None:
        self.params, self.cfg, self.measure = params, cfg, measure
        self.start = self.best = measure()
        self.best_values = [p.detach().clone() for p in params]
        self.misses = 0
        self.gained = False

    def should_stop(self) -> bool:
        kl = self.measure()
        if kl < self.best:
            fall = self.start - kl
            gained = self.best - kl > max(self.cfg.min_gain * fall, _KL_FLOOR)
            self.best, self.best_values = kl, [p.detach().clone() for p in self.params]
            self.misses = 0 if gained else self.misses + 1
            self.gained = self.gained or gained
        else:
            self.misses += 1
        if self.within_tolerance(self.best):
            return True
        return self.misses >= self.cfg.patience + (0 if self.gained else 1)

    def within_tolerance(self, kl: float) -> bool:
        tolerance = self.cfg.kl_tolerance  # 0 is off: a KL of equal outputs may round below 0
        return tolerance > 0 and kl < tolerance

    def restore_best(self) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, self.best_values, strict=True):
                p.copy_(value)
