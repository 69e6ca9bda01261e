"""The chenyaofo/pytorch-cifar-models layouts: strict loading, layout hints, RepVGG fusion."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantpipe.errors import ModelError
from quantpipe.models.cifar_zoo.repvgg import FusedRepVGGBlock, RepVGGBlock
from quantpipe.models.cifar_zoo.specs import (
    CIFAR10_ZOO_PREPROCESSING,
    CIFAR100_ZOO_PREPROCESSING,
    zoo_specs,
)
from quantpipe.models.deploy import DEPLOY_TOLERANCE
from quantpipe.models.registry import MODELS, build_model
from quantpipe.models.spec import ModelSpec
from tests.conftest import CIFAR_TAR as CIFAR10_JPEG
from tests.conftest import RESNET20 as AKAMASTER_RESNET20
from tests.conftest import ZOO_RESNET20

# (state_dict entries, parameters) of the zoo's own definitions (pytorch_cifar_models at
# chenyaofo/pytorch-cifar-models 786c162), counted by building each `cifar10_<name>` /
# `cifar100_<name>` from that source; the parameter counts round to the zoo README's
# "#Params" column (0.27M, 0.70M, ..., 26.94M).
ZOO_COUNTS: dict[str, tuple[int, int]] = {
    "chenyaofo-cifar10-resnet20": (128, 272_474),
    "chenyaofo-cifar10-resnet32": (200, 466_906),
    "chenyaofo-cifar10-resnet44": (272, 661_338),
    "chenyaofo-cifar10-resnet56": (344, 855_770),
    "chenyaofo-cifar10-mobilenetv2_x0_5": (314, 700_490),
    "chenyaofo-cifar10-mobilenetv2_x0_75": (314, 1_368_234),
    "chenyaofo-cifar10-mobilenetv2_x1_0": (314, 2_236_682),
    "chenyaofo-cifar10-mobilenetv2_x1_4": (314, 4_333_706),
    "chenyaofo-cifar10-shufflenetv2_x0_5": (338, 352_042),
    "chenyaofo-cifar10-shufflenetv2_x1_0": (338, 1_263_854),
    "chenyaofo-cifar10-shufflenetv2_x1_5": (338, 2_488_874),
    "chenyaofo-cifar10-shufflenetv2_x2_0": (338, 5_365_486),
    "chenyaofo-cifar10-repvgg_a0": (356, 7_840_874),
    "chenyaofo-cifar10-repvgg_a1": (356, 12_824_202),
    "chenyaofo-cifar10-repvgg_a2": (351, 26_815_690),
    "chenyaofo-cifar10-vgg11_bn": (62, 9_756_426),
    "chenyaofo-cifar10-vgg13_bn": (76, 9_941_322),
    "chenyaofo-cifar10-vgg16_bn": (97, 15_253_578),
    "chenyaofo-cifar10-vgg19_bn": (118, 20_565_834),
    "chenyaofo-cifar100-resnet20": (128, 278_324),
    "chenyaofo-cifar100-resnet32": (200, 472_756),
    "chenyaofo-cifar100-resnet44": (272, 667_188),
    "chenyaofo-cifar100-resnet56": (344, 861_620),
    "chenyaofo-cifar100-mobilenetv2_x0_5": (314, 815_780),
    "chenyaofo-cifar100-mobilenetv2_x0_75": (314, 1_483_524),
    "chenyaofo-cifar100-mobilenetv2_x1_0": (314, 2_351_972),
    "chenyaofo-cifar100-mobilenetv2_x1_4": (314, 4_495_076),
    "chenyaofo-cifar100-shufflenetv2_x0_5": (338, 444_292),
    "chenyaofo-cifar100-shufflenetv2_x1_0": (338, 1_356_104),
    "chenyaofo-cifar100-shufflenetv2_x1_5": (338, 2_581_124),
    "chenyaofo-cifar100-shufflenetv2_x2_0": (338, 5_549_896),
    "chenyaofo-cifar100-repvgg_a0": (356, 7_956_164),
    "chenyaofo-cifar100-repvgg_a1": (356, 12_939_492),
    "chenyaofo-cifar100-repvgg_a2": (351, 26_942_500),
    "chenyaofo-cifar100-vgg11_bn": (62, 9_802_596),
    "chenyaofo-cifar100-vgg13_bn": (76, 9_987_492),
    "chenyaofo-cifar100-vgg16_bn": (97, 15_299_748),
    "chenyaofo-cifar100-vgg19_bn": (118, 20_612_004),
}
REPVGG = [name for name in ZOO_COUNTS if "repvgg" in name]
REPVGG_BLOCKS = 1 + 2 + 4 + 14 + 1  # stage0 + the A series' stages 1-4


def _needs(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            pytest.skip(f"{path} is absent (the shared checkpoints and data live in ../shared)")


def test_the_registry_holds_every_zoo_model_for_both_data_sets() -> None:
    assert sorted(s.name for s in zoo_specs()) == sorted(ZOO_COUNTS)
    assert all(name in MODELS for name in ZOO_COUNTS)


@pytest.mark.parametrize("name", list(ZOO_COUNTS))
def test_zoo_entries_have_the_zoo_layouts_keys_parameters_and_contract(name: str) -> None:
    spec = MODELS[name]
    with torch.device("meta"):  # the big members cost nothing to count here
        net = spec.build()
    assert (len(net.state_dict()), sum(p.numel() for p in net.parameters())) == ZOO_COUNTS[name]
    cifar100 = "-cifar100-" in name
    assert spec.num_classes == (100 if cifar100 else 10)
    assert spec.preprocessing == (
        CIFAR100_ZOO_PREPROCESSING if cifar100 else CIFAR10_ZOO_PREPROCESSING
    )
    assert (spec.task, spec.weights, spec.input_shape) == (
        "classification",
        "required",
        (3, 32, 32),
    )
    assert "chenyaofo/pytorch-cifar-models" in spec.description
    assert (spec.deploy is not None) == ("repvgg" in name)


@pytest.mark.parametrize(
    "name",
    [
        "chenyaofo-cifar100-resnet20",
        "chenyaofo-cifar10-mobilenetv2_x0_5",
        "chenyaofo-cifar100-shufflenetv2_x0_5",
        "chenyaofo-cifar10-vgg11_bn",
    ],
)
def test_small_zoo_members_run_on_32x32_inputs(name: str) -> None:
    net = MODELS[name].build().eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, MODELS[name].num_classes)


def test_the_zoo_checkpoint_loads_strictly_and_classifies_cifar10() -> None:
    _needs(ZOO_RESNET20, CIFAR10_JPEG)
    from quantpipe.data.registry import open_dataset
    from quantpipe.data.selection import select

    spec = MODELS["chenyaofo-cifar10-resnet20"]
    model = build_model(spec, str(ZOO_RESNET20))
    raw = torch.load(ZOO_RESNET20, map_location="cpu", weights_only=True)
    assert list(raw) == list(model.state_dict())  # no key left out, none remapped
    x, y = select(
        open_dataset(f"cifar10:{CIFAR10_JPEG}"), "test", spec.preprocessing, 0, 500
    ).arrays()
    assert y is not None
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    # 92.6 % on lossless CIFAR-10 (zoo README); the JPEG copy costs several points.
    assert float(np.mean(predicted == y)) > 0.80


def test_an_akamaster_checkpoint_given_to_the_zoo_resnet_suggests_the_akamaster_name() -> None:
    _needs(AKAMASTER_RESNET20)
    with pytest.raises(ModelError, match=r"linear\.weight") as info:
        build_model(MODELS["chenyaofo-cifar10-resnet20"], str(AKAMASTER_RESNET20))
    assert str(info.value).endswith("fit model cifar10-resnet20: pass --model cifar10-resnet20")
    assert "\n" not in str(info.value)


def test_a_zoo_checkpoint_given_to_the_akamaster_resnet_suggests_the_zoo_name() -> None:
    _needs(ZOO_RESNET20)
    with pytest.raises(ModelError, match=r"fc\.weight") as info:
        build_model(MODELS["cifar10-resnet20"], str(ZOO_RESNET20))
    assert str(info.value).endswith("pass --model chenyaofo-cifar10-resnet20")


def test_a_cifar100_checkpoint_given_to_a_cifar10_model_suggests_the_cifar100_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cifar100_mobilenetv2_x0_5.pt"
    torch.save(MODELS["chenyaofo-cifar100-mobilenetv2_x0_5"].build().state_dict(), path)
    with pytest.raises(ModelError, match=r"another shape \(e\.g\. classifier\.1\.weight") as info:
        build_model(MODELS["chenyaofo-cifar10-mobilenetv2_x0_5"], str(path))
    assert str(info.value).endswith("pass --model chenyaofo-cifar100-mobilenetv2_x0_5")


def test_a_checkpoint_no_entry_takes_keeps_the_generic_advice(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ModelError, match="check that --model names the architecture"):
        build_model(MODELS["chenyaofo-cifar10-vgg11_bn"], str(path))


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


def _train_time(spec: ModelSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = spec.build().eval()
    _randomise_batchnorm(model, seed)
    return model


@pytest.mark.parametrize("name", REPVGG)
def test_repvgg_deploy_form_equals_the_train_time_model_with_plain_3x3_blocks(name: str) -> None:
    spec = MODELS[name]
    assert spec.deploy is not None
    assert spec.deploy_form == "RepVGG branches fused into one 3×3 conv per block"
    model = _train_time(spec, seed=1)
    fused = spec.deploy(model)
    x = torch.randn(4, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((model(x) - fused(x)).abs().max()) <= DEPLOY_TOLERANCE
    assert any(isinstance(m, RepVGGBlock) for m in model.modules())  # left as it was
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == REPVGG_BLOCKS
    assert sum(isinstance(m, FusedRepVGGBlock) for m in fused.modules()) == REPVGG_BLOCKS
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in convs)
    # The zoo's own deploy-form names (its `convert_to_inference_model`), nothing else.
    assert all(
        k.rsplit(".", 2)[-2:] in (["rbr_reparam", "weight"], ["rbr_reparam", "bias"])
        or k.startswith("linear.")
        for k in fused.state_dict()
    )


def test_a_repvgg_checkpoint_loads_as_its_deploy_form_which_runs_in_onnxruntime(
    tmp_path: Path,
) -> None:
    import onnxruntime as ort

    from quantpipe.export.onnx_export import INPUT_NAME, export_onnx, graph_summary
    from quantpipe.export.options import ExportOptions

    spec = MODELS["chenyaofo-cifar10-repvgg_a0"]
    train_time = _train_time(spec, seed=2)
    path = tmp_path / "cifar10_repvgg_a0.pt"  # a train-time checkpoint, as the zoo ships
    torch.save(train_time.state_dict(), path)
    deployed = build_model(spec, str(path))  # loads, fuses, checks the difference
    assert isinstance(deployed.get_submodule("stage0"), FusedRepVGGBlock)
    proto = export_onnx(deployed, spec, ExportOptions(opset=17))  # dynamo=False, like `export`
    summary = graph_summary(proto)
    assert summary["opset"] == 17 and summary["batchnorm_nodes"] == 0
    assert summary["ops"]["Conv"] == REPVGG_BLOCKS
    x = torch.randn(3, *spec.input_shape, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, train_time(x).numpy(), atol=1e-4, rtol=1e-4)
