"""The `report` stage on a real run of a tiny model: every stage run through the CLI
(train, export, btc, ptq of the FP32 and of the BTC model, engines, bench with ONNX
Runtime's baselines), then report.md and its figures checked against what the run
recorded and wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from quantpipe.cli import main
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import RunOptions, run_stage
from quantpipe.report import tables
from quantpipe.stages.bench_result import BenchResult
from quantpipe.stages.btc_result import BtcResult
from quantpipe.stages.ptq_result import PtqResult
from quantpipe.stages.report import ReportConfig, ReportStage

# FP16 engines need quantpipe/engines/fp16.py (onnxconverter-common).
HAS_FP16 = importlib.util.find_spec("quantpipe.engines.fp16") is not None
PRECISIONS = "fp32,fp16,int8" if HAS_FP16 else "fp32,int8"
PNGS = ("accuracy_vs_size.png", "latency_vs_batch.png", "btc_layers.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of digits-mlp through every stage up to `report` (about 20 s)."""
    run = tmp_path_factory.mktemp("report") / "run"
    data = ["--data", "digits"]
    steps = [
        ["train", "--model", "digits-mlp", *data, "--epochs", "2"],
        ["export", "--model", "digits-mlp", *data],
        ["btc", "--model", "digits-mlp", *data, "--target-bits", "5", "--calib-count", "256",
         "--retune-steps", "20"],
        ["ptq", *data, "--calib-count", "128"],
        ["ptq", *data, "--calib-count", "128", "--onnx", str(run / "model.btc.onnx")],
        ["engines", "--precisions", PRECISIONS],
        ["bench", *data, "--duration", "0.05", "--iterations", "2", "--rounds", "1",
         "--batch-sizes", "1,8", "--ort-baselines"],
        ["report"],
    ]  # fmt: skip
    for step in steps:
        assert main([*step, "--run-dir", str(run), "--quiet"]) == 0, step
    return run


def _bench(run: Path) -> BenchResult:
    return BenchResult.from_json(json.loads((run / "bench" / "bench.json").read_text()))


def _record(run: Path, name: str) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"][name]


def _table(text: str) -> list[dict[str, str]]:
    """The comparison table of report.md as one dict per row, keyed by header."""
    section = text.split("## Engines compared\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip("|").split(" | ") for line in section.splitlines()]
    headers = [h.strip() for h in lines[0]]
    return [dict(zip(headers, (c.strip() for c in cells), strict=True)) for cells in lines[2:]]


def test_every_engine_of_the_bench_has_a_row_baselines_last(run_dir: Path) -> None:
    rows = _table((run_dir / "report" / "report.md").read_text())
    bench = _bench(run_dir)
    assert len(rows) == len(bench.engines) == (8 if HAS_FP16 else 7)
    shipped = {r["shipped file"].strip("`") for r in rows}
    for e in bench.engines:
        expected = "model.btc" if (e.model, e.precision) == ("btc", "fp32") else e.name
        assert expected in shipped, e.name
    variants = [r["variant"] for r in rows]
    assert variants[0] == "FP32" and {"INT8 PTQ", "BTC", "BTC + INT8"} <= set(variants)
    assert ("FP16" in variants) == HAS_FP16
    baselines = [i for i, v in enumerate(variants) if v.startswith("ORT baseline")]
    assert baselines == list(range(len(rows) - 3, len(rows)))  # the three, last


def test_the_btc_row_ships_the_container_with_its_effective_bits(run_dir: Path) -> None:
    rows = _table((run_dir / "report" / "report.md").read_text())
    btc = BtcResult.from_json(_record(run_dir, "btc")["results"])
    container = (run_dir / "model.btc").stat().st_size
    assert btc.size.btc_bytes == container
    row = next(r for r in rows if r["variant"] == "BTC")
    assert row["shipped file"] == "`model.btc`"
    assert row["size"] == tables.size_text(container)
    assert row["bits/weight"] == f"{btc.summary.b_eff:.2f}"
    fp32 = next(e for e in _bench(run_dir).engines if e.name == "fp32.onnxruntime-cpu.fp32.onnx")
    assert row["vs FP32 size"] == f"{fp32.bytes / container:.2f}×"


def test_timings_and_accuracies_are_the_benchs(run_dir: Path) -> None:
    rows = _table((run_dir / "report" / "report.md").read_text())
    by_file = {r["shipped file"].strip("`"): r for r in rows}
    for e in _bench(run_dir).engines:
        row = by_file.get(e.name) or by_file["model.btc"]
        assert row["accuracy"] == e.accuracy.short()
        for batch in (1, 8):  # the bench's smallest and largest: the default
            timing = e.at(batch)
            assert timing is not None
            assert row[f"b{batch} p50 ms"] == tables.ms_text(timing.latency_ms.median)
            assert row[f"b{batch} p99 ms"] == tables.ms_text(timing.latency_ms.p99)
        assert row["b8 samples/s"] == f"{e.at(8).samples_per_s:,.0f}"  # type: ignore[union-attr]


def test_the_report_names_model_machine_data_and_method(run_dir: Path) -> None:
    text = (run_dir / "report" / "report.md").read_text()
    bench = _bench(run_dir)
    assert text.startswith("# Report: run `run`, model digits-mlp\n")
    assert f"- Machine: {bench.machine.describe()}" in text
    count = bench.data.count
    assert f"digits (built-in), split test, {count:,} samples" in text
    assert f"{bench.plan.warmup_s:g} s of warm-up" in text and "copies included" in text
    assert f"in {bench.rounds} rounds in which the engines take turns" in text
    for name in ("ptq", "ptq.btc"):
        result = PtqResult.from_json(_record(run_dir, name)["results"])
        assert f"(record `{name}`)" in text
        assert f"Calibrator kept: **{result.calibrator}**" in text
        for calibrator, scores in result.per_calibrator.items():
            assert f"| {calibrator} | {scores.val:.2f} |" in text
    assert BtcResult.from_json(_record(run_dir, "btc")["results"]).lines()[0] in text
    for png in PNGS:
        assert f"]({png})" in text


@pytest.mark.parametrize("name", PNGS)
def test_the_figures_are_pngs_of_a_readable_size(run_dir: Path, name: str) -> None:
    import matplotlib.image

    path = run_dir / "report" / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert 600 <= width <= 1400 and 250 <= height <= 2000, (width, height)
    assert pixels[..., :3].std() > 0.05  # something is drawn


def test_the_stage_records_its_files_and_is_skipped_when_up_to_date(run_dir: Path) -> None:
    record = _record(run_dir, "report")
    assert [o["path"] for o in record["outputs"]] == [f"report/{p}" for p in PNGS] + [
        "report/report.md"
    ]
    assert record["results"]["rows"] == len(_bench(run_dir).engines)
    with RunDir.open(run_dir) as run:
        outcome = run_stage(run, ReportStage(), RunOptions(progress=False))
    assert outcome.skipped
    assert outcome.result.lines()[0].startswith("report/report.md: ")
    assert all(f"report/{p}" in outcome.result.lines()[0] for p in PNGS)


def test_chosen_batch_sizes_are_the_columns(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--run-dir", str(run_dir), "--batch-sizes", "8", "--quiet"]) == 0
    assert str(run_dir / "report" / "report.md") in capsys.readouterr().out
    row = _table((run_dir / "report" / "report.md").read_text())[0]
    assert "b8 p50 ms" in row and "b1 p50 ms" not in row and "b8 speed-up" in row
    assert main(["report", "--run-dir", str(run_dir), "--batch-sizes", "4"]) == 2
    err = capsys.readouterr().err
    assert "--batch-sizes 4: the bench timed only 1,8" in err and len(err.splitlines()) == 1
    assert main(["report", "--run-dir", str(run_dir), "--quiet"]) == 0  # back to the default


def test_a_run_without_bench_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["report", "--run-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "run `quantpipe bench` first" in err and len(err.splitlines()) == 1


def test_the_config_is_checked() -> None:
    with pytest.raises(QuantpipeError, match="distinct positive"):
        ReportConfig((0,))
    with pytest.raises(QuantpipeError, match="distinct positive"):
        ReportConfig((8, 8))
    assert ReportConfig().shown([1, 8, 32]) == (1, 32)
    assert ReportConfig().shown([4]) == (4,)
    assert ReportConfig((32, 1)).shown([1, 8, 32]) == (1, 32)


def test_the_stage_has_the_common_contract() -> None:
    from tests.unit.test_structure import test_every_stage_has_the_same_contract

    test_every_stage_has_the_same_contract(ReportStage)
    assert ReportStage.kind == ReportStage.name == "report"


@pytest.mark.parametrize(
    ("model", "precision", "variant"),
    [("fp32", "fp32", "FP32"), ("fp32", "fp16", "FP16"), ("fp32", "int8", "INT8 PTQ"),
     ("btc", "fp32", "BTC"), ("btc", "int8", "BTC + INT8"), ("qat", "int8", "QAT + INT8")],
)  # fmt: skip
def test_variant_names(model: str, precision: str, variant: str) -> None:
    assert tables.variant(model, precision) == variant
    assert tables.baseline_variant("ort-qdq-s8s8.onnx") == "ORT baseline qdq-s8s8"
