"""`mixed/report.md` and its plots: the thesis's Table 4.3 (INT8 PTQ and QAT) and Table
4.4 (mixed precision) layouts, the same-size comparison of allocations, the packed sizes,
and accuracy versus weight size for FP32, BTC, INT8 PTQ, QAT and the mixed frontier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantpipe.artifacts import (
    MIXED_ACCURACY_PNG,
    MIXED_PARETO_PNG,
    MIXED_REPORT_MD,
    MIXED_SENSITIVITY_PNG,
    mixed_path,
    mp_file,
    mp_packed_file,
)
from quantpipe.stages.mixed_result import MixedResult, ScoredAllocation

if TYPE_CHECKING:
    from quantpipe.mixed.pareto import Allocation
    from quantpipe.pipeline.stage import StageContext
    from quantpipe.stages.mixed_session import Session

DPI = 110


def write_report(result: MixedResult, s: Session, onnx: Path, ctx: StageContext) -> None:
    plot_accuracy(result, ctx.output(mixed_path(onnx, MIXED_ACCURACY_PNG)))
    metric = "mIoU" if s.contract.task == "segmentation" else "top-1"
    text = "\n".join(report_lines(result, onnx, metric)) + "\n"
    ctx.output(mixed_path(onnx, MIXED_REPORT_MD)).write_text(text)


def report_lines(r: MixedResult, onnx: Path, metric: str) -> list[str]:
    d, v = r.data_test, r.data_val
    model = onnx.name
    lines = [
        f"# Mixed precision: {model}, {r.precision}",
        "",
        f"Accuracy is {metric} (%) on {d.dataset} split `{d.split}`, {d.count:,} samples "
        f"({d.path or 'built-in'}); selection used split `{v.split}`, {v.count:,} samples; "
        f"truth: {r.truth}. Sizes are the quantized Conv/Gemm weights ({r.layers} layers): "
        f"Σ P·b/8 bytes; FP32 {r.fp32_weight_bytes:,} bytes.",
        "",
        "2-, 4- and 6-bit weights are a storage format here: `"
        f"{mp_file(onnx)}` holds them as INT8 on their narrower grid, and ONNX Runtime and "
        "TensorRT execute them as INT8 (activations below 8 bits are clipped to their grid "
        f"before an INT8 QuantizeLinear). `{mp_packed_file(onnx)}` stores the weights truly "
        "packed at their widths.",
        "",
        "## INT8 (thesis Table 4.3 layout)",
        "",
        "| model | precision | accuracy | drop |",
        "|---|---|---|---|",
    ]
    for ref in r.references:
        drop = r.fp32.test - ref.accuracy.test
        lines.append(f"| {model} | {ref.name} | {ref.accuracy.test:.2f} | {drop:+.2f} |")
    lines += [
        "",
        # The thesis's Table 4.4 holds classifiers, its Table 4.8 the segmentation models.
        f"## Mixed precision (thesis Table {'4.8' if metric == 'mIoU' else '4.4'} layout)",
        "",
        "| model | W-bit | A-bit | accuracy | size (KB) | drop | compression |",
        "|---|---|---|---|---|---|---|",
    ]
    tuned = f" + {len(r.qat_epochs)} QAT epochs" if r.qat_epochs else ""
    rows = [(f"{r.precision}, {r.chosen.name}{tuned} (exported)", r.chosen, r.mp.test)]
    if r.qat_epochs:
        rows.append(("the same before QAT (fake quant)", r.chosen, r.chosen.accuracy.test))
    rows += [(f"{c.name} (fake quant)", c, c.accuracy.test) for c in _table_points(r)]
    for name, c, acc in rows:
        lines.append(
            f"| {model} | {name}, mean {c.mean_bits:.2f} | A{r.activation_bits} | {acc:.2f} | "
            f"{c.size_bytes / 1000:,.1f} | {r.fp32.test - acc:+.2f} | {c.compression:.2f}× |"
        )
    lines += (
        _comparison_lines(r)
        + _search_lines(r)
        + _packed_lines(r, onnx)
        + [
            "",
            "## Plots",
            "",
            f"![accuracy versus size]({MIXED_ACCURACY_PNG})",
            f"![sensitivity]({MIXED_SENSITIVITY_PNG})",
            f"![Pareto frontier]({MIXED_PARETO_PNG})",
        ]
    )
    return lines


def _all_scored(r: MixedResult) -> list[ScoredAllocation]:
    """Every allocation measured on test (fake quant), the chosen one first."""
    return [r.chosen, r.proxy, *r.sweep] + [row for c in r.comparisons for row in c.rows]


def _table_points(r: MixedResult) -> list[ScoredAllocation]:
    """The frontier sweep and the uniform and sensitivity rows of each comparison, each
    allocation once, by size."""
    picked = [*r.sweep] + [
        row for c in r.comparisons for row in c.rows if not row.name.startswith("random")
    ]
    seen, out = {tuple(sorted(r.chosen.bits.items()))}, []
    for row in sorted(picked, key=lambda p: p.size_bytes):
        key = tuple(sorted(row.bits.items()))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _comparison_lines(r: MixedResult) -> list[str]:
    lines = ["", "## Same size: sensitivity against uniform and random allocations", ""]
    for c in r.comparisons:
        what = (
            f"the uniform {c.at.removeprefix('uniform ')} allocation (first and last layer at 8)"
            if c.at.startswith("uniform")
            else "the chosen allocation"
        )
        lines += [
            f"Within {c.size_bytes:,.0f} bytes, the size of {what}:",
            "",
            "| allocation | size (KB) | compression | val | test |",
            "|---|---|---|---|---|",
        ]
        for row in c.rows:
            acc = row.accuracy
            lines.append(
                f"| {row.name} | {row.size_bytes / 1000:,.1f} | {row.compression:.2f}× | "
                f"{acc.val:.2f} | {acc.test:.2f} |"
            )
        verdict = (
            "Every allocation is the same here: at this size the widths leave no choice."
            if c.degenerate
            else f"Best on val: **{c.winner.name}** (test {c.winner.accuracy.test:.2f})."
        )
        lines += ["", verdict, ""]
    lines.append(_ranking_verdict(r))
    return lines


def _ranking_verdict(r: MixedResult) -> str:
    """Which of S and S/P gave the better measured accuracy at equal size."""
    wins = {"S": 0, "S/P": 0}
    for c in r.comparisons:
        ranked = {row.name.removeprefix("sensitivity "): row for row in c.rows}
        if "S" in ranked and "S/P" in ranked:
            s, sp = ranked["S"].accuracy.val, ranked["S/P"].accuracy.val
            if s != sp:
                wins["S" if s > sp else "S/P"] += 1
    return (
        f"S (the thesis, as written) beat S/P (per weight) on val at {wins['S']} of "
        f"{len(r.comparisons)} sizes, S/P beat S at {wins['S/P']}."
    )


def _search_lines(r: MixedResult) -> list[str]:
    if r.max_drop is None:
        p, c = r.proxy, r.chosen
        how = (
            "delivered as the thesis does, unmeasured"
            if r.picked_by == "proxy"
            else f"measured on val ({p.accuracy.val:.2f} %); the best on val of every "
            f"allocation measured within the budget was **{c.name}** ({c.accuracy.val:.2f} % "
            f"val, {c.compression:.2f}×), which is delivered (`--pick proxy` delivers the "
            "thesis's choice instead)"
        )
        return [
            "",
            "## Selection",
            "",
            f"Budget {r.budget_bytes:,.0f} bytes. The thesis's choice, the least-cost point of "
            f"the {r.ranking}-ranked frontier ({r.frontier_points} points) within it, is "
            f"{p.size_bytes:,.0f} bytes ({p.compression:.2f}×): {how}.",
        ]
    lines = [
        "",
        f"## Accuracy-verified selection (--max-drop {r.max_drop:g} points on val)",
        "",
        "| size (KB) | compression | val | val drop |",
        "|---|---|---|---|",
    ]
    for p in r.searched:
        lines.append(
            f"| {p.size_bytes / 1000:,.1f} | {p.compression:.2f}× | {p.accuracy.val:.2f} | "
            f"{r.fp32.val - p.accuracy.val:+.2f} |"
        )
    return lines


def _packed_lines(r: MixedResult, onnx: Path) -> list[str]:
    p = r.packed
    return [
        "",
        "## Storage",
        "",
        f"- `{mp_packed_file(onnx)}`: {p.file_bytes:,} bytes — codes {p.code_bytes:,}, "
        f"scales {p.scale_bytes:,}, raw float tensors {p.raw_bytes:,}, the rest table and "
        "metadata",
        f"- theoretical size Σ P·b/8 (the thesis's): {p.theoretical_bytes:,.0f} bytes",
        f"- `{mp_file(onnx)}` (INT8 weights): {p.onnx_bytes:,} bytes",
        f"- agreement of the export with the fake-quantized graph: "
        f"{r.torch_onnx_agreement:.2f} % top-1 on test; ONNX Runtime CPU build "
        f"{r.ort_cpu.test:.2f} %",
    ]


def plot_accuracy(r: MixedResult, path: Path) -> None:
    """Test accuracy against weight size (log): the run's artifacts and the mixed points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, ref in enumerate(r.references):
        ax.scatter(ref.size_bytes / 1000, ref.accuracy.test, marker="s", s=45, zorder=3)
        # INT8 PTQ and QAT share a size: stack their labels rather than overprint them.
        same = sum(p.size_bytes == ref.size_bytes for p in r.references[:i])
        ax.annotate(ref.name, (ref.size_bytes / 1000, ref.accuracy.test), fontsize=8,
                    xytext=(4, 4 - 10 * same), textcoords="offset points")  # fmt: skip
    others = {(c.size_bytes, c.accuracy.test) for c in _all_scored(r)}
    ax.plot([m[0] / 1000 for m in others], [m[1] for m in others], "o", color="#bbbbbb",
            ms=4, label="other allocations (fake quant)")  # fmt: skip
    curve = sorted((p.size_bytes, p.accuracy.test) for p in r.sweep)
    ax.plot([m[0] / 1000 for m in curve], [m[1] for m in curve], "o-", color="#3465a4",
            ms=5, label=f"{r.ranking}-ranked Pareto frontier (fake quant)")  # fmt: skip
    ax.scatter(r.chosen.size_bytes / 1000, r.mp.test, marker="*", s=160, color="#cc0000",
               zorder=4, label=f"exported {r.precision}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("weight size (KB, Σ P·b/8; log scale)")
    d = r.data_test
    ax.set_ylabel(f"accuracy (%), {d.dataset} {d.split}, {d.count:,} samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_pareto(frontiers: Mapping[str, Sequence[Allocation]], path: Path) -> None:
    """The Pareto frontier (size against the proxy Σ S/b) of each ranking."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(frontiers), figsize=(5.5 * len(frontiers), 4))
    for ax, (ranking, frontier) in zip(
        axes if len(frontiers) > 1 else [axes], frontiers.items(), strict=True
    ):
        ax.plot([a.size_bytes / 1000 for a in frontier], [a.cost for a in frontier], ".-", ms=3)
        ax.set_xlabel("weight size (KB)")
        ax.set_ylabel(f"Σ {ranking} / b (thesis eq. 3.4)")
        ax.set_title(f"ranked by {ranking}: {len(frontier)} points")
        ax.grid(alpha=0.3)
    _save(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)  # the path may be a stage's temporary name
    _pyplot().close(fig)
