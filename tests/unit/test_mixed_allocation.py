"""Presets, the uniform and random allocations a sensitivity allocation is compared with,
and the packed weights of a mixed-precision Q/DQ model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.mixed import baselines
from quantpipe.mixed.packed_onnx import pack_qdq_weights, restore, weight_tensors
from quantpipe.mixed.pareto import Layer
from quantpipe.mixed.presets import parse_precision
from quantpipe.quantize import QDQConfig, plan_qdq, quantize_qdq
from quantpipe.quantize.bits import BitWidths


def test_presets_name_widths_and_activation_bits() -> None:
    p = parse_precision("4MP-A6")
    assert (p.widths, p.activation_bits, p.lowest, p.default_compression) == ((4, 8), 6, (4,), 5)
    p = parse_precision("2mp-a8")
    assert (p.widths, p.lowest, p.default_compression) == ((2, 4, 8), (2, 4), 6)
    assert parse_precision("4MP-A8", widths=(8, 3), activation_bits=4).name == "W3/8-A4"


@pytest.mark.parametrize(
    ("preset", "widths", "act", "message"),
    [
        ("3MP-A8", None, None, "use 4MP-A8"),
        ("4MP-A9", None, None, "bit width 9 is not an integer in 2..8"),
        ("4MP-A8", (1, 8), None, "--widths: bit width 1 is not"),
        ("4MP-A8", (4, 8), 12, "bit width 12 is not"),
        ("4MP-A8", (8,), None, "at least two bit widths"),
    ],
)
def test_bad_presets_and_widths_are_clear_errors(
    preset: str, widths: tuple[int, ...] | None, act: int | None, message: str
) -> None:
    with pytest.raises(QuantpipeError, match=message):
        parse_precision(preset, widths, act)


LAYERS = [Layer(f"l{k}", p, 1.0) for k, p in enumerate([432, 2304, 4608, 9216, 36864, 640])]


def test_uniform_puts_the_first_and_last_layer_at_8() -> None:
    bits = baselines.uniform(LAYERS, 4)
    assert bits == {"l0": 8, "l1": 4, "l2": 4, "l3": 4, "l4": 4, "l5": 8}
    assert baselines.size_bytes(LAYERS, bits) == (432 + 640) + (2304 + 4608 + 9216 + 36864) / 2


def test_random_allocations_fit_the_budget_fill_it_and_repeat_with_the_seed() -> None:
    budget = baselines.size_bytes(LAYERS, baselines.uniform(LAYERS, 4))
    first = baselines.random_allocations(LAYERS, (2, 4, 8), budget, 3, seed=7)
    assert first == baselines.random_allocations(LAYERS, (2, 4, 8), budget, 3, seed=7)
    assert len({tuple(sorted(a.items())) for a in first}) > 1  # they do differ
    smallest = min(layer.params for layer in LAYERS)
    for bits in first:
        size = baselines.size_bytes(LAYERS, bits)
        assert size <= budget
        # Filled: no layer could be widened one step within what is left.
        assert (
            all(
                bits[la.name] == 8 or la.params * bits[la.name] / 8 > budget - size for la in LAYERS
            )
            or budget - size < smallest * 2 / 8
        )
    with pytest.raises(QuantpipeError, match="below the all-2-bit size"):
        baselines.random_allocations(LAYERS, (2, 4, 8), 100.0, 1, seed=0)


def _float_model() -> onnx.ModelProto:
    from quantpipe.export.onnx_export import export_onnx
    from quantpipe.export.options import ExportOptions
    from quantpipe.models.registry import MODELS, build_model

    spec = MODELS["fmnist-cnn"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(build_model(spec, None), spec, ExportOptions())


def _qdq_model(bits: BitWidths) -> onnx.ModelProto:
    model = _float_model()
    amax = {t: 2.0 for t in plan_qdq(model, QDQConfig()).calibration_tensors}
    return quantize_qdq(model, amax, QDQConfig(), bits).model


def test_packed_weights_restore_the_exported_model_exactly(tmp_path: Path) -> None:
    plan = plan_qdq(_float_model(), QDQConfig())
    widths = dict(zip([w.node for w in plan.weights], (2, 4, 8, 4), strict=False))
    model = _qdq_model(BitWidths(widths))
    accounting = pack_qdq_weights(model, BitWidths(widths), tmp_path / "m.qpmix", {"k": 1})
    tensors = weight_tensors(model, BitWidths(widths))
    expected = [BitWidths(widths).weight(w.node) for w in plan.weights]
    assert sorted(t.bits for t in tensors.values()) == sorted(expected)
    assert accounting.theoretical_bytes == sum(t.codes.size * t.bits for t in tensors.values()) / 8
    assert (tmp_path / "m.qpmix").stat().st_size == accounting.file_bytes
    blank = onnx.ModelProto()
    blank.CopyFrom(model)
    for init in blank.graph.initializer:  # every value zeroed: restore must bring all back
        array = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(array), init.name))
    restored = restore(blank, tmp_path / "m.qpmix")
    assert restored.SerializeToString() == model.SerializeToString()


def test_packed_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    model = _qdq_model(BitWidths())
    pack_qdq_weights(model, BitWidths(), tmp_path / "m.qpmix", {})
    other = onnx.ModelProto()
    other.CopyFrom(model)
    victim = next(i for i in other.graph.initializer if len(i.dims) >= 2)  # a weight's codes
    victim.name = "renamed"
    with pytest.raises(CorruptArtifactError, match="do not belong to this model"):
        restore(other, tmp_path / "m.qpmix")
