"""RepVGG through export, ptq and btc in its deploy form (branches fused into one 3×3 conv),
and every record says so."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from quantpipe.cli import main
from quantpipe.models.registry import MODELS
from tests.conftest import CIFAR_TAR, needs_shared

pytestmark = needs_shared
MODEL = "chenyaofo-cifar10-repvgg_a0"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repvgg")
    torch.manual_seed(0)
    net = MODELS[MODEL].build()
    for m in net.modules():  # trained-looking BatchNorm, so that fusing is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    torch.save(net.state_dict(), root / "a0.pt")
    common = ["--data", f"cifar10:{CIFAR_TAR}", "--run-dir", str(root / "run"), "--quiet"]
    model = ["--model", MODEL, "--weights", str(root / "a0.pt")]
    assert main(["export", *model, "--parity-count", "64", *common]) == 0
    assert main(["ptq", "--calib-count", "64", "--eval-count", "100", *common]) == 0
    btc = ["btc", *model, "--calib-count", "64", "--eval-count", "100", *common]
    assert main(btc) == 0
    return root / "run"


def _results(run: Path, stage: str) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"][stage]["results"]


def test_the_exported_graph_is_the_fused_deploy_form(run: Path) -> None:
    proto = onnx.load(str(run / "model.fp32.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 22 and "BatchNormalization" not in ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "fused" in meta["quantpipe.deploy_form"]
    assert "fused" in _results(run, "export")["deploy_form"]
    assert _results(run, "export")["parity"]["max_abs_diff"] <= 1e-4


def test_ptq_and_btc_say_they_worked_on_the_deploy_form(run: Path) -> None:
    assert "fused" in _results(run, "ptq")["input_form"]
    btc = (run / "btc" / "report.md").read_text()
    assert "rbr_reparam" in btc and "rbr_dense" not in btc  # the layers coded are fused ones
