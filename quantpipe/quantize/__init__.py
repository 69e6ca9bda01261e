"""Q/DQ insertion (PTQ) with TensorRT-compatible placement, and model-vs-model error reports."""

from quantpipe.quantize.compare import CompareResult, ErrorRow, compare_models
from quantpipe.quantize.placement import FloatNode, QDQConfig, QDQPlan, plan_qdq
from quantpipe.quantize.qdq import QDQResult, quantize_qdq, quantize_weight

__all__ = [
    "CompareResult",
    "ErrorRow",
    "FloatNode",
    "QDQConfig",
    "QDQPlan",
    "QDQResult",
    "compare_models",
    "plan_qdq",
    "quantize_qdq",
    "quantize_weight",
]
