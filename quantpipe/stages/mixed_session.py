"""The mixed stage's working parts: its configuration, what it reads from the run (ptq's
placement and ranges, the data), the quantizable layers, and the evaluation of one bit
allocation by exporting it and running it in ONNX Runtime (what TensorRT computes: exact
Q/DQ arithmetic, fusions off). On CIFAR ResNet-20 that is about 3× faster than running
the fake-quantized torch graph (2,000 images: 7.4 s in torch, ~2.5 s in ONNX Runtime)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantpipe.data.selection import Selection, select
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.export.metadata import ModelContract, require_contract
from quantpipe.export.onnx_file import load_onnx
from quantpipe.mixed.pareto import Layer
from quantpipe.mixed.presets import Precision, parse_precision
from quantpipe.mixed.sensitivity import SensitivityConfig
from quantpipe.pipeline.manifest import Manifest
from quantpipe.qat.config import QatTraining
from quantpipe.quantize import QDQConfig, plan_qdq
from quantpipe.quantize.bits import BitWidths
from quantpipe.quantize.graph import GraphIndex, with_unique_node_names
from quantpipe.quantize.placement import QDQPlan
from quantpipe.stages.common import DataRef, LabelSource
from quantpipe.stages.from_ptq import ptq_ranges, ptq_record, training_split
from quantpipe.stages.mixed_result import ScoredAllocation
from quantpipe.stages.ptq_result import PtqResult
from quantpipe.stages.ptq_scoring import Quantizer, accuracy

# The layers whose weights get a bit width: the multiply-accumulate ones.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FP32_BYTES = 4
PICKS = ("measured", "proxy")


@dataclass(frozen=True)
class MixedConfig:
    """What to allocate and how to choose. `qat` None: no fine-tuning."""

    preset: str = "4MP-A8"
    widths: tuple[int, ...] | None = None
    activation_bits: int | None = None
    budget_bytes: float | None = None
    compression: float | None = None
    max_drop: float | None = None
    normalise: bool = False  # rank layers by S / P instead of the thesis's S
    pick: str = "measured"  # deliver the best val among those measured, or the "proxy"'s
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    sensitivity_count: int = 128  # the calib batch the sensitivity is measured on
    randoms: int = 3
    sweep: int = 5  # frontier points measured for the accuracy-versus-size plot
    qat: QatTraining | None = None
    eval_count: int | None = None

    def __post_init__(self) -> None:
        self.precision()  # a bad preset or width fails here, before any work
        if self.pick not in PICKS:
            raise QuantpipeError(f"--pick {self.pick!r}: use one of {', '.join(PICKS)}")
        if self.budget_bytes is not None and self.compression is not None:
            raise QuantpipeError("give --budget or --compression, not both")
        for name, value in (("--budget", self.budget_bytes), ("--compression", self.compression)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise QuantpipeError(f"{name} {value!r}: give a positive number")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise QuantpipeError(f"--max-drop {self.max_drop!r}: give points of accuracy ≥ 0")
        if self.sensitivity_count < 1 or self.randoms < 0 or self.sweep < 0:
            raise QuantpipeError(
                f"--sensitivity-count {self.sensitivity_count} must be ≥ 1, --randoms "
                f"{self.randoms} and --sweep {self.sweep} ≥ 0"
            )

    def precision(self) -> Precision:
        return parse_precision(self.preset, self.widths, self.activation_bits)

    @staticmethod
    def from_flags(
        *,
        trials: int = 4,
        epsilon: float = SensitivityConfig.epsilon,
        sensitivity_seed: int = 0,
        qat_epochs: int = 0,
        qat_lr: float | None = None,
        qat_batch_size: int = 128,
        qat_train_count: int | None = None,
        **values: Any,
    ) -> MixedConfig:
        """From the CLI flags or a run config's [mixed] keys: the nested sensitivity and
        QAT settings as flat keys (`trials`, `qat_epochs`, ...), the rest as they are."""
        normalise = bool(values.get("normalise", False))
        sensitivity = SensitivityConfig(trials, epsilon, sensitivity_seed, normalise)
        qat = None
        if qat_epochs:
            qat = QatTraining(
                epochs=qat_epochs, lr=qat_lr, batch_size=qat_batch_size,
                train_count=qat_train_count,
            )  # fmt: skip
        if values.get("widths") is not None:
            values["widths"] = tuple(values["widths"])
        return MixedConfig(**values, sensitivity=sensitivity, qat=qat)


@dataclass(frozen=True)
class WeightLayer:
    node: str  # the node name bit widths are keyed by
    initializer: str  # its float weight
    params: int


@dataclass
class Session:
    model: Any  # the float ONNX model ptq quantized (node names made unique)
    ptq: PtqResult
    exclude: tuple[str, ...]
    amax: dict[str, float]
    plan: QDQPlan
    layers: list[WeightLayer]
    contract: ModelContract
    calib: Selection
    val: Selection
    test: Selection
    labels: LabelSource
    data: DataRef
    run_path: Path

    @property
    def fp32_weight_bytes(self) -> int:
        return FP32_BYTES * sum(layer.params for layer in self.layers)

    def train_split(self, count: int | None, threads: int) -> Selection:
        dataset, pre = self.data.open(), self.contract.preprocessing
        split = training_split(dataset, self.data, pre, count, "mixed --qat-epochs")
        return self.labels.label(split, self.run_path, threads)


def prepare(
    onnx: Path,
    data: DataRef,
    config: MixedConfig,
    labels: LabelSource,
    run_path: Path,
    threads: int,
) -> Session:
    record = ptq_record(Manifest.load(run_path), run_path, onnx, "mixed")
    ptq, exclude = PtqResult.from_json(record.results), tuple(record.params.get("exclude", ()))
    amax, _ = ptq_ranges(run_path, onnx, ptq)
    model = with_unique_node_names(load_onnx(onnx))
    plan = plan_qdq(model, QDQConfig(exclude=exclude))
    contract = require_contract(onnx)
    dataset, pre, seed = data.open(), contract.preprocessing, data.seed
    splits = (
        select(dataset, "calib", pre, seed, config.sensitivity_count),
        select(dataset, "val", pre, seed, config.eval_count),
        select(dataset, "test", pre, seed, config.eval_count),
    )
    calib, val, test = (labels.label(s, run_path, threads) for s in splits)
    layers = weighted_layers(model, plan)
    return Session(
        model, ptq, exclude, amax, plan, layers, contract, calib, val, test, labels, data, run_path
    )


def weighted_layers(model: Any, plan: QDQPlan) -> list[WeightLayer]:
    """The Conv/Gemm/MatMul nodes whose float weight the plan quantizes, in graph order."""
    index = GraphIndex(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    layers = []
    for w in plan.weights:
        source, value = index.constant_source(w.tensor), index.constant(w.tensor)
        if ops[w.node] not in WEIGHTED_OPS or source is None or value is None:
            continue
        if value.dtype.kind == "f" and value.ndim >= 2:
            layers.append(WeightLayer(w.node, source, int(value.size)))
    if not layers:
        raise QuantpipeError(
            "mixed precision found no quantized Conv, Gemm or MatMul weight in this model: "
            "nothing to allocate bit widths to"
        )
    return layers


def pareto_layers(layers: list[WeightLayer], scores: dict[str, float]) -> list[Layer]:
    return [Layer(layer.node, layer.params, scores[layer.node]) for layer in layers]


class Evaluator:
    """Scores bit allocations: each is exported with `quantize_qdq` and run in ONNX
    Runtime on val (and test), in exact Q/DQ arithmetic."""

    def __init__(self, s: Session, precision: Precision, tmp: Path, threads: int) -> None:
        self.s, self.precision, self.tmp = s, precision, tmp
        self.quantizer = Quantizer(save_float(s, tmp), QDQConfig(exclude=s.exclude))
        self.ort = OrtConfig(threads=threads, qdq_fusions=False)
        self._count = 0

    def bits(self, allocation: dict[str, int]) -> BitWidths:
        return BitWidths(allocation, self.precision.activation_bits)

    def score(self, name: str, allocation: dict[str, int], test: bool = True) -> ScoredAllocation:
        self._count += 1
        path = self.tmp / f"candidate{self._count}.onnx"
        quantized = self.quantizer.quantize(
            self.s.amax, self.s.ptq.calibrator, self.bits(allocation)
        )
        quantized.save(path)
        val = accuracy(path, self.s.val, self.s.contract, self.ort)
        tested = accuracy(path, self.s.test, self.s.contract, self.ort) if test else math.nan
        path.unlink()
        size = sum(layer.params * allocation[layer.node] for layer in self.s.layers) / 8
        return ScoredAllocation(
            name, dict(allocation), size, self.s.fp32_weight_bytes / size, SplitScores(val, tested)
        )


def save_float(s: Session, tmp: Path) -> Path:
    """The float model (unique node names, which the bit widths are keyed by) in `tmp`."""
    import onnx

    path = tmp / "float.onnx"
    onnx.save(s.model, str(path))
    return path
