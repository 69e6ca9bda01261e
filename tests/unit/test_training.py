"""The train stage's recipe resolution, its segmentation loss, and the models it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantpipe.data.tabular_stats import TABULAR_STATS
from quantpipe.errors import QuantpipeError
from quantpipe.models.registry import MODELS
from quantpipe.stages.training import GENERIC_RECIPE, TrainConfig, class_weights, fit


def test_the_users_value_beats_the_models_recipe_which_beats_the_generic_one() -> None:
    recipe = dict(MODELS["fmnist-seg-fcn"].train_defaults)
    resolved = TrainConfig(epochs=2).resolved(recipe)
    assert resolved.epochs == 2  # the user's
    assert resolved.batch_size == recipe["batch_size"]  # the model's
    assert resolved.lr == GENERIC_RECIPE["lr"]  # nobody's: generic
    assert None not in resolved.to_dict().values()
    assert resolved.to_dict()["channels_last"] is True  # the depthwise/FCN recipes' speed-up


def test_models_without_the_channels_last_recipe_keep_their_recorded_parameters() -> None:
    # fmnist-cnn's published weights were trained before channels_last existed: its train
    # record (and so whether a run is up to date) must not change.
    assert TrainConfig().resolved(dict(MODELS["fmnist-cnn"].train_defaults)).to_dict() == {
        "epochs": 5, "batch_size": 256, "lr": 6e-3, "weight_decay": 1e-4,
    }  # fmt: skip


def test_a_bad_training_value_is_refused() -> None:
    with pytest.raises(QuantpipeError, match="--batch-size must be at least 1, got 0"):
        TrainConfig(batch_size=0)


def test_median_frequency_weights_favour_rare_classes_and_skip_absent_and_void() -> None:
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, :2] = 1  # 20 pixels of class 1, 70 of class 0, 10 void, class 2 absent
    masks[0, 2] = 255
    w = class_weights(masks, 3).numpy()
    assert w[2] == 0
    assert w[1] > 1 > w[0]
    np.testing.assert_allclose(
        w[:2], np.median([0.7 / 0.9, 0.2 / 0.9]) / np.array([0.7, 0.2]) * 0.9
    )


def test_segmentation_training_learns_a_mask_and_leaves_the_weights_contiguous() -> None:
    torch.manual_seed(0)
    net = MODELS["fmnist-seg-fcn"].build()
    rng = np.random.default_rng(0)
    bright = rng.random((16, 2, 2)) > 0.5  # which quadrants hold a bright square
    y = np.kron(bright, np.ones((28, 28))).astype(np.uint8)  # class 1 there, 0 elsewhere
    x = (y[:, None] + 0.3 * rng.standard_normal((16, 1, 56, 56))).astype(np.float32)
    cfg = TrainConfig(epochs=6, batch_size=8, lr=1e-2, weight_decay=0.0).resolved({})
    with torch.no_grad():
        before = (net.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    fit(net, x, y, cfg, seed=0, progress=False, segmentation_classes=11)
    with torch.no_grad():
        after = (net(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert after > max(before, 0.9)
    assert all(p.is_contiguous() for p in net.parameters())


@pytest.mark.parametrize("name", ["tabular-mlp-breast-cancer", "tabular-mlp-wine"])
def test_tabular_models_standardise_with_the_train_pools_statistics(name: str) -> None:
    spec = MODELS[name]
    mean, std = TABULAR_STATS[name.removeprefix("tabular-mlp-")]
    assert spec.input_shape == (len(mean), 1, 1)
    assert spec.preprocessing.mean == mean and spec.preprocessing.std == std


def test_depthwise_models_have_depthwise_convs_and_relu6() -> None:
    for name in ("fmnist-mobilenetv2", "fmnist-shufflenetv2"):
        net = MODELS[name].build()
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert any(c.groups == c.in_channels > 1 for c in convs), name
    assert any(
        isinstance(m, torch.nn.ReLU6) for m in MODELS["fmnist-mobilenetv2"].build().modules()
    )


def test_the_segmentation_fcn_answers_at_the_input_resolution() -> None:
    out = MODELS["fmnist-seg-fcn"].build().eval()(torch.zeros(2, 1, 56, 56))
    assert out.shape == (2, 11, 56, 56)
