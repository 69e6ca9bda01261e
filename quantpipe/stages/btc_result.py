"""What `btc` found, typed, and its report: the paper's Table 2 layout plus effective bits
and the size ratio, the candidates of a search, and the 8-bit block share per layer."""

from __future__ import annotations

from dataclasses import dataclass

from quantpipe.artifacts import BTC
from quantpipe.btc.container import ContainerAccounting
from quantpipe.btc.model import LayerSummary, ModelSummary
from quantpipe.data.selection import DataInfo
from quantpipe.pipeline.results import JsonResult
from quantpipe.text_table import format_table


@dataclass(frozen=True)
class Fp32Scores:
    """The FP32 model's headline metric (%): on test always, on val when the mode selected
    on val (None: it was not needed, so not measured)."""

    test: float
    val: float | None = None


@dataclass(frozen=True)
class BtcAccuracy:
    fp32: Fp32Scores
    btc_test: float
    data_test: DataInfo
    data_val: DataInfo | None = None  # the val split, when something was measured on it


@dataclass(frozen=True)
class Baseline:
    """A plain 8-bit quantizer of the same weights, for comparison."""

    test_accuracy: float
    bits: int
    b_eff: float
    rmse: float


@dataclass(frozen=True)
class Candidate:
    """One coding a search tried: its policy, bits, error and accuracy."""

    policy: str
    block_size: int
    low_bits: int
    high_bits: int
    clip_grid: list[float]
    b_avg: float
    b_eff: float
    rmse: float
    val_accuracy: float
    val_drop: float
    test_accuracy: float
    tau: float | None = None
    target_bits: float | None = None


@dataclass(frozen=True)
class BtcSize:
    btc_bytes: int
    onnx_fp32_bytes: int
    ratio: float


@dataclass(frozen=True)
class BtcResult(JsonResult):
    mode: str
    retune_steps: int
    summary: ModelSummary
    accuracy: BtcAccuracy
    baselines: dict[str, Baseline]  # empty unless measured (--baselines)
    candidates: list[Candidate]
    container: ContainerAccounting
    size: BtcSize
    truth: str = "labels"
    retune_steps_run: int | None = None  # the chosen model's (early stopping); None: not recorded
    device: str = "cpu"  # where Fisher importance and re-tuning ran

    def lines(self) -> list[str]:
        s, acc, d = self.summary, self.accuracy, self.accuracy.data_test
        lines = [
            f"BTC {s.b_eff:.3f} effective bits ({s.b_avg:.3f} payload), "
            f"{self.size.ratio:.2f}× smaller than the FP32 ONNX; {self._metric()} "
            f"{acc.btc_test:.2f} % vs FP32 {acc.fp32.test:.2f} % on {d.dataset} "
            f"{d.split} ({d.count:,} samples)"
        ]
        if self.retune_steps and self.retune_steps_run is not None:
            lines.append(
                f"re-tuned {self.retune_steps_run} of at most {self.retune_steps} steps on "
                f"{self.device}"
            )
        return lines

    def artifact_bits(self) -> dict[str, str]:
        """Weight bits of the BTC artifact (for the run summary)."""
        return {BTC: f"{self.summary.b_eff:.2f} eff."}

    def table(self, model: str) -> str:
        """Table 2 of the paper (plus effective bits and the size ratio), candidates, layers."""
        s, acc = self.summary, self.accuracy
        uni = self.baselines.get("uniform8_per_tensor")
        headers = (
            "model", "FP32 acc", "BTC acc", "uniform acc", "BTC RMSE", "BTC payload bits",
            "BTC eff. bits", "uniform bits", "size ratio vs FP32 ONNX",
        )  # fmt: skip
        row = (
            model, f"{acc.fp32.test:.2f}", f"{acc.btc_test:.2f}",
            "—" if uni is None else f"{uni.test_accuracy:.2f}", f"{s.rmse:.2e}",
            f"{s.b_avg:.3f}", f"{s.b_eff:.3f}", "—" if uni is None else f"{uni.bits}",
            f"{self.size.ratio:.2f}×",
        )  # fmt: skip
        data = acc.data_test
        lines = [
            format_table(headers, [row]),
            f"Accuracies: {self._metric()} (%) on {data.dataset} split {data.split}, "
            f"{data.count:,} samples ({data.where()}). Policy: {s.policy}."
            + ("" if uni else " Uniform 8-bit baselines: not measured (--baselines)."),
        ]
        if self.candidates:
            lines += ["", "Candidates (selected on val, reported on test):", self._candidates()]
        lines += ["", "Share of 8-bit blocks per layer:", _layers_table(s.layers)]
        return "\n".join(lines)

    def _metric(self) -> str:
        return "top-1" if self.truth == "labels" else f"agreement with {self.truth}"

    def _candidates(self) -> str:
        rows = [
            (
                c.block_size,
                c.tau if c.tau is not None else c.target_bits,
                f"{c.b_avg:.3f}",
                f"{c.b_eff:.3f}",
                f"{c.rmse:.2e}",
                f"{c.val_accuracy:.2f}",
                f"{c.val_drop:+.2f}",
                f"{c.test_accuracy:.2f}",
            )
            for c in self.candidates
        ]
        headers = (
            "B", "τ / budget", "payload bits", "eff. bits", "RMSE", "val acc", "val drop",
            "test acc",
        )  # fmt: skip
        return format_table(headers, rows)


def _layers_table(layers: tuple[LayerSummary, ...]) -> str:
    rows = [(x.name, f"{x.n:,}", f"{100 * x.frac_high:.1f} %", f"{x.b_eff:.2f}") for x in layers]
    return format_table(("layer", "weights", "8-bit blocks", "eff. bits"), rows)
