from pathlib import Path

import pytest
import torch

from quantpipe.errors import ModelError
from quantpipe.models.registry import MODELS, build_model, get_model_spec, summarize
from quantpipe.models.user_model import parse_input_shape

USER_MODEL = """
import torch
from torch import nn

def build():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5))
    net.input_shape = (3, 16, 16)
    return net

def shapeless():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
"""


@pytest.mark.parametrize(
    ("name", "params"),
    [("cifar10-resnet20", 269_722), ("cifar10-resnet32", 464_154), ("resnet18", 11_689_512)],
)
def test_parameter_counts_match_the_published_architectures(name: str, params: int) -> None:
    assert summarize(MODELS[name]).parameters == params


def test_cifar_resnet_forward_shape_and_option_a_shortcut_has_no_parameters() -> None:
    net = MODELS["cifar10-resnet20"].build().eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert not any("shortcut" in k for k in net.state_dict())


@pytest.mark.parametrize(
    "name",
    [
        "fmnist-cnn", "digits-mlp", "fcn-resnet18-19", "fmnist-mobilenetv2",
        "fmnist-shufflenetv2", "fmnist-seg-fcn", "tabular-mlp-breast-cancer", "tabular-mlp-wine",
    ],
)  # fmt: skip
def test_builtin_models_produce_their_declared_outputs(name: str) -> None:
    spec = MODELS[name]
    shape = (1, *spec.input_shape) if name != "fcn-resnet18-19" else (1, 3, 64, 128)
    out = spec.build().eval()(torch.zeros(shape))
    assert out.shape[1] == spec.num_classes
    assert out.ndim == (4 if spec.task == "segmentation" else 2)


def test_fmnist_cnn_has_batchnorm_and_a_residual_add() -> None:
    net = MODELS["fmnist-cnn"].build()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert type(net.block1).__name__ == "ResidualBlock"


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ModelError, match=r"did you mean .*cifar10-resnet20"):
        get_model_spec("cifar10-resnet2")


def test_required_weights_are_enforced() -> None:
    with pytest.raises(ModelError, match="needs trained weights"):
        build_model(MODELS["cifar10-resnet20"], None)


def test_hub_weights_are_refused_without_downloading() -> None:
    with pytest.raises(ModelError, match="never downloads"):
        build_model(MODELS["resnet18"], "IMAGENET1K_V1")


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="weights file not found"):
        build_model(MODELS["digits-mlp"], str(tmp_path / "nope.pt"))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        build_model(MODELS["digits-mlp"], str(bad))


def test_weights_of_another_architecture_list_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(
        {
            "state_dict": {
                f"module.{k}": v for k, v in MODELS["fmnist-cnn"].build().state_dict().items()
            }
        },
        path,
    )
    with pytest.raises(ModelError) as e:
        build_model(MODELS["digits-mlp"], str(path))
    msg = str(e.value)
    assert "6 missing keys (e.g. net.1.bias" in msg
    assert "unexpected keys (e.g. block1.body1.0.weight" in msg


def test_prefixed_nested_checkpoint_loads(tmp_path: Path) -> None:
    src = MODELS["digits-mlp"].build()
    path = tmp_path / "w.th"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "best_prec1": 1.0},
        path,
    )
    net = build_model(MODELS["digits-mlp"], str(path))
    assert torch.equal(net.net[1].weight, src.net[1].weight)


def test_user_model_from_file(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(USER_MODEL)
    spec = get_model_spec(f"{tmp_path}/net.py:build")
    assert (spec.input_shape, spec.task, spec.num_classes) == ((3, 16, 16), "classification", 5)
    with pytest.raises(ModelError, match="no input shape"):
        get_model_spec(f"{tmp_path}/net.py:shapeless")
    assert get_model_spec(f"{tmp_path}/net.py:shapeless", (3, 2, 2)).num_classes == 2
    with pytest.raises(ModelError, match="has no callable named 'nothere'"):
        get_model_spec(f"{tmp_path}/net.py:nothere")


def test_input_shape_parsing() -> None:
    assert parse_input_shape("3,32,32") == (3, 32, 32)
    with pytest.raises(ModelError, match="not C,H,W"):
        parse_input_shape("3,32")


def test_a_model_without_weights_is_the_same_random_model_in_every_stage() -> None:
    """export, btc and eval each build it: they must build the same one."""
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(MODELS["digits-mlp"], None).state_dict()
    second = build_model(MODELS["digits-mlp"], None).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is untouched
