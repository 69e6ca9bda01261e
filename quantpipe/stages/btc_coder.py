"""The btc stage's working parts: code a model under a policy, decode (and re-tune) it,
search candidates on `val`, and the 8-bit baselines. The modes (btc_modes.py) decide
which candidates to try and how to pick; this module knows nothing of them."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from quantpipe.btc.model import ModelEncoding, decode_model, encode_model, select_weight_names
from quantpipe.btc.policy import Policy, TargetBits
from quantpipe.btc.retune import RetuneConfig, fp32_targets, retune_affine
from quantpipe.btc.torch_bridge import fisher_importance, model_state, with_weights
from quantpipe.btc.uniform import per_channel_percentile, per_tensor_minmax
from quantpipe.data.selection import Selection
from quantpipe.errors import QuantpipeError
from quantpipe.stages.btc_result import Baseline
from quantpipe.stages.btc_scoring import OrtScorer

if TYPE_CHECKING:
    import onnx

IMPORTANCE_SAMPLES = 512


@dataclass(frozen=True, eq=False)
class Coded:
    """One candidate: its policy, its coding, the decoded (re-tuned) model, the re-tuning
    steps that ran, val accuracy."""

    policy: Policy
    encoding: ModelEncoding
    model: nn.Module
    retune_steps: int = 0
    val_accuracy: float | None = None

    def row(self, fp32_val: float) -> dict[str, Any]:
        s = self.encoding.summary
        acc = self.val_accuracy if self.val_accuracy is not None else float("nan")
        return {
            **self.policy.describe(),
            "b_avg": s.b_avg,
            "b_eff": s.b_eff,
            "rmse": s.rmse,
            "val_accuracy": acc,
            "val_drop": fp32_val - acc,
        }


class Coder:
    """The model's weights, the tensors to code, their importance, and re-tuning.

    `fp32` is `net` exported to ONNX: ONNX Runtime computes re-tuning's FP32 targets from
    it, once for every candidate."""

    def __init__(
        self,
        net: nn.Module,
        fp32: onnx.ModelProto,
        calib: Selection,
        retune: RetuneConfig,
        scorer: OrtScorer,
        progress: bool,
    ) -> None:
        self.net, self.fp32, self.calib, self.retune = net, fp32, calib, retune
        self.scorer, self.spec, self.progress = scorer, scorer.spec, progress
        self.state = model_state(net)
        self.names = select_weight_names(net)
        if not self.names:
            raise QuantpipeError(f"model {self.spec.name} has no Conv or Linear weights to code")
        self._importance: dict[str, np.ndarray] | None = None
        self._distillation: tuple[torch.Tensor, torch.Tensor] | None = None

    def encode(self, policy: Policy) -> ModelEncoding:
        importance = self.importance() if isinstance(policy, TargetBits) else None
        return encode_model(self.state, self.names, policy, importance)

    def code(self, policy: Policy, encoding: ModelEncoding | None = None) -> Coded:
        """Encode (unless given), decode, and re-tune the uncoded parameters."""
        encoding = encoding or self.encode(policy)
        decoded = with_weights(copy.deepcopy(self.net), decode_model(encoding.encoded))
        if not self.retune.steps:
            return Coded(policy, encoding, decoded)
        inputs, targets = self.distillation()
        tuned = retune_affine(decoded, inputs, targets, self.retune, self.progress)
        return Coded(policy, encoding, tuned.model, tuned.steps)

    def distillation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-tuning's inputs and the FP32 model's log-probabilities on them, made once."""
        if self._distillation is None:
            x, _ = self.calib.head(self.retune.samples).arrays()
            targets = fp32_targets(self.scorer.logits(self.fp32, x))
            self._distillation = torch.from_numpy(x), targets
        return self._distillation

    def importance(self) -> dict[str, np.ndarray]:
        if self._importance is None:
            data = self.calib.head(IMPORTANCE_SAMPLES)
            net = copy.deepcopy(self.net)
            self._importance = fisher_importance(net, data, self.names, self.retune.device)
        return self._importance

    def uncoded(self, model: nn.Module) -> dict[str, np.ndarray]:
        """The tensors stored raw (FP32), taken from the (re-tuned) model."""
        return {k: v for k, v in model_state(model).items() if k not in self.names}

    def with_reconstruction(self, weights: dict[str, np.ndarray]) -> nn.Module:
        return with_weights(copy.deepcopy(self.net), weights)


def search(
    coder: Coder,
    policies: list[Policy],
    fp32_val: float,
    val: Selection,
    max_drop: float,
    max_rmse: float | None,
    first_admissible: bool,
) -> tuple[Coded, list[Coded]]:
    """Code and score each policy on `val`; keep the fewest effective bits whose accuracy
    drop (and RMSE, when bounded) is admissible. `first_admissible` stops at the first
    one, for policies ordered by ascending budget."""
    scored: list[Coded] = []
    for policy in policies:
        c = coder.code(policy)
        c = dataclasses.replace(c, val_accuracy=coder.scorer.accuracy(c.model, val))
        scored.append(c)
        if first_admissible and _admissible(c, fp32_val, max_drop, max_rmse):
            break
    ok = [c for c in scored if _admissible(c, fp32_val, max_drop, max_rmse)]
    if not ok:
        best = max(scored, key=lambda c: c.val_accuracy or 0.0)
        raise QuantpipeError(
            f"no BTC configuration meets an accuracy drop ≤ {max_drop} points"
            f"{'' if max_rmse is None else f' and RMSE ≤ {max_rmse:g}'} on the val split (best "
            f"drop {fp32_val - (best.val_accuracy or 0.0):.2f} points at "
            f"{best.encoding.summary.b_eff:.2f} effective bits): allow a larger --max-drop"
        )
    return min(ok, key=lambda c: c.encoding.summary.b_eff), scored


def _admissible(c: Coded, fp32_val: float, max_drop: float, max_rmse: float | None) -> bool:
    drop_ok = fp32_val - (c.val_accuracy or 0.0) <= max_drop
    return drop_ok and (max_rmse is None or c.encoding.summary.rmse <= max_rmse)


def baselines(coder: Coder, test: Selection) -> dict[str, Baseline]:
    """8-bit per-tensor min/max (paper §2.3) and per-channel 99.99th-percentile quantizers."""
    out = {}
    for label, fn in (
        ("uniform8_per_tensor", per_tensor_minmax),
        ("percentile8_per_channel", per_channel_percentile),
    ):
        results = {k: fn(coder.state[k]) for k in coder.names}
        n = sum(r.reconstruction.size for r in results.values())
        net = coder.with_reconstruction({k: r.reconstruction for k, r in results.items()})
        out[label] = Baseline(
            test_accuracy=coder.scorer.accuracy(net, test),
            bits=8,
            b_eff=sum(r.b_eff * r.reconstruction.size for r in results.values()) / n,
            rmse=float(
                np.sqrt(sum(r.rmse**2 * r.reconstruction.size for r in results.values()) / n)
            ),
        )
    return out
