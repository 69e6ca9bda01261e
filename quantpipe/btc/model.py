"""Whole-model BTC: pick the tensors, code them under a policy, summarise the result."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from quantpipe.btc.allocate import encode_target_bits
from quantpipe.btc.codec import EncodeResult, decode_tensor, encode_tensor_with_error
from quantpipe.btc.encoded import EncodedTensor
from quantpipe.btc.policy import Policy, SigmaRule, TargetBits
from quantpipe.errors import QuantpipeError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LayerSummary:
    """Accounting and error of one coded tensor."""

    name: str
    shape: tuple[int, ...]
    n: int
    n_blocks: int
    n_high_blocks: int
    frac_high: float
    payload_bits: int
    header_bits: int
    b_avg: float
    b_eff: float
    rmse: float
    sse: float
    wsse: float | None


@dataclass(frozen=True)
class ModelSummary:
    """Totals over all coded tensors (bits per weight are weighted by tensor size)."""

    policy: dict[str, Any]
    n: int
    payload_bits: int
    header_bits: int
    b_avg: float
    b_eff: float
    rmse: float
    sse: float
    wsse: float | None
    frac_high: float
    layers: tuple[LayerSummary, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["layers"] = [asdict(x) | {"shape": list(x.shape)} for x in self.layers]
        return d


@dataclass(frozen=True, eq=False)
class ModelEncoding:
    """The coded tensors (in the order given) and their summary."""

    encoded: dict[str, EncodedTensor]
    summary: ModelSummary


def select_weight_names(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the weights of every Conv (1/2/3-d, transposed, grouped,
    depthwise) and Linear module, in module order; modules without a weight in the
    state dict (e.g. under a parametrization) are skipped."""
    from torch import nn

    keys = set(model.state_dict().keys())
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            key = f"{prefix}.weight" if prefix else "weight"
            if key in keys and key not in names:
                names.append(key)
    return names


def _check_inputs(
    state: Mapping[str, np.ndarray],
    names: Sequence[str],
    importance: Mapping[str, np.ndarray] | None,
) -> None:
    if not names:
        raise QuantpipeError("no tensors to code: `names` is empty")
    if len(set(names)) != len(names):
        raise QuantpipeError(f"tensor names to code repeat: {sorted(names)}")
    missing = [k for k in names if k not in state]
    if missing:
        raise QuantpipeError(f"tensors to code are not in the state dict: {missing[:5]}")
    if importance is None:
        return
    for k in names:
        if k not in importance:
            raise QuantpipeError(f"importance has no entry for tensor {k!r}")
        imp = np.asarray(importance[k])
        if imp.shape != np.shape(state[k]):
            raise QuantpipeError(
                f"importance for {k!r} has shape {imp.shape}, the weight {np.shape(state[k])}"
            )
        if not (np.isfinite(imp).all() and (imp >= 0).all()):
            raise QuantpipeError(f"importance for {k!r} must be finite and >= 0")


def encode_model(
    state: Mapping[str, np.ndarray],
    names: Sequence[str],
    policy: Policy,
    importance: Mapping[str, np.ndarray] | None = None,
    *,
    workers: int | None = None,
) -> ModelEncoding:
    """Code the tensors `names` of `state` under `policy`.

    Args:
        state: tensor name -> float weights (the trained model's, before BN folding).
        names: the tensors to code (e.g. `select_weight_names(model)`).
        policy: SigmaRule (the paper) or TargetBits (a global budget).
        importance: name -> non-negative array shaped like the weight (e.g. squared
            gradients); weights the allocation error. None = uniform.
        workers: threads (None = all available CPUs).
    """
    _check_inputs(state, names, importance)
    if isinstance(policy, TargetBits):
        results = encode_target_bits(state, policy, importance, workers, names)
    elif isinstance(policy, SigmaRule):
        results = {k: _encode_sigma(state[k], policy, importance, k, workers) for k in names}
    else:
        raise QuantpipeError(f"unknown BTC policy {policy!r}: use SigmaRule or TargetBits")
    summary = summarize(results, policy.describe())
    return ModelEncoding({k: r.encoded for k, r in results.items()}, summary)


def _encode_sigma(
    w: np.ndarray,
    policy: SigmaRule,
    importance: Mapping[str, np.ndarray] | None,
    name: str,
    workers: int | None,
) -> EncodeResult:
    return encode_tensor_with_error(
        w,
        policy.block_size,
        tau=policy.tau,
        low_bits=policy.low_bits,
        high_bits=policy.high_bits,
        clip_grid=policy.clip_grid,
        importance=None if importance is None else importance[name],
        name=name,
        workers=workers,
    )


def _layer(name: str, r: EncodeResult) -> LayerSummary:
    e = r.encoded
    return LayerSummary(
        name=name,
        shape=e.shape,
        n=e.n,
        n_blocks=e.n_blocks,
        n_high_blocks=int(np.count_nonzero(e.high)),
        frac_high=e.frac_high,
        payload_bits=e.payload_bits,
        header_bits=e.header_bits,
        b_avg=e.b_avg,
        b_eff=e.b_eff,
        rmse=r.rmse,
        sse=float(r.block_sse.sum()),
        wsse=None if r.block_wsse is None else float(r.block_wsse.sum()),
    )


def summarize(results: Mapping[str, EncodeResult], policy: dict[str, Any]) -> ModelSummary:
    """Totals and per-layer figures of a set of encode results."""
    layers = tuple(_layer(k, r) for k, r in results.items())
    n = sum(x.n for x in layers)
    payload = sum(x.payload_bits for x in layers)
    header = sum(x.header_bits for x in layers)
    sse = math.fsum(x.sse for x in layers)
    wsses = [x.wsse for x in layers]
    high_blocks = sum(x.n_high_blocks for x in layers)
    return ModelSummary(
        policy=policy,
        n=n,
        payload_bits=payload,
        header_bits=header,
        b_avg=payload / n,
        b_eff=(payload + header) / n,
        rmse=math.sqrt(sse / n),
        sse=sse,
        wsse=None if None in wsses else math.fsum(x for x in wsses if x is not None),
        frac_high=high_blocks / sum(x.n_blocks for x in layers),
        layers=layers,
    )


def decode_model(
    encoded: Mapping[str, EncodedTensor], *, workers: int | None = None
) -> dict[str, np.ndarray]:
    """Decode every tensor (float32, original shapes)."""
    return {k: decode_tensor(e, workers=workers) for k, e in encoded.items()}
