"""The zoo's table: the BTC paper's Table 2 layout (FP32, BTC, uniform 8-bit accuracy, BTC
RMSE and bits) plus BTC at 4.5 effective bits, INT8 and the calibrator `auto` kept; written
as `zoo/report.md` and `zoo/zoo.json`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from quantpipe.pipeline.atomic import atomic_write_json, atomic_write_text
from quantpipe.report.tables import markdown_table
from quantpipe.zoo.runner import BUDGET_BITS, ZooRow


def zoo_markdown(rows: Sequence[ZooRow], machine: str, quick: bool) -> str:
    headers = (
        "model", "params", "FP32", "BTC (rule)", "uniform 8-bit", "BTC RMSE", "BTC eff. bits",
        f"BTC @{BUDGET_BITS} bits", "INT8", "INT8 CPU build", "calibrator kept",
    )  # fmt: skip
    table = markdown_table(headers, [_cells(r) for r in rows])
    drops = markdown_table(
        ("model", *sorted({n for r in rows for n in r.calibrator_drops}), "kept"),
        [_drop_cells(r, sorted({n for r in rows for n in r.calibrator_drops})) for r in rows],
    )
    data = "\n".join(f"- {r.model}: {r.metric} on {r.data}; weights: {r.weights}" for r in rows)
    scope = (
        "**Quick form** (small sample counts, short re-tuning): it checks the path, its "
        "figures are not the published ones.\n\n"
        if quick
        else ""
    )
    return (
        "# Zoo: every model through export → btc → ptq → eval\n\n"
        f"{scope}Machine: {machine}.\n\n"
        "Accuracies in % of each model's headline metric on its test split (data below). "
        "BTC (rule): the paper's σ-rule (B = 64, τ = 0.05, 4/8 bits, no re-tuning); "
        f"BTC @{BUDGET_BITS}: Fisher-weighted allocation at {BUDGET_BITS} effective bits "
        "(headers included) with affine re-tuning; uniform 8-bit: per-tensor min-max "
        "weights; INT8: Q/DQ ONNX with the calibrator `--calibrator auto` kept on val "
        "(weights and activations); INT8 CPU build: ONNX Runtime's integer-kernel model.\n\n"
        f"{table}\n\n"
        "INT8 drop (points, FP32 − INT8 on test) per calibrator:\n\n"
        f"{drops}\n\n"
        f"Data:\n\n{data}\n"
    )


def _cells(r: ZooRow) -> list[str]:
    return [
        r.model, f"{r.parameters:,}", f"{r.fp32:.2f}", f"{r.btc_rule:.2f}", f"{r.uniform8:.2f}",
        f"{r.btc_rule_rmse:.2e}", f"{r.btc_rule_bits:.2f}",
        f"{r.btc_budget:.2f} ({r.btc_budget_bits:.2f})", f"{r.int8:.2f}",
        f"{r.int8_cpu_build:.2f}", r.calibrator,
    ]  # fmt: skip


def _drop_cells(r: ZooRow, names: Sequence[str]) -> list[str]:
    cells = [f"{r.calibrator_drops[n]:+.2f}" if n in r.calibrator_drops else "" for n in names]
    return [r.model, *cells, r.calibrator]


def write_zoo_report(rows: Sequence[ZooRow], out: Path, machine: str, quick: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "zoo.json", [asdict(r) for r in rows])
    path = out / "report.md"
    atomic_write_text(path, zoo_markdown(rows, machine, quick))
    return path
