import numpy as np
import pytest

from quantpipe.evaluate.metrics import Agreement, MeanIoU, TopK


def test_topk_counts_by_hand() -> None:
    logits = np.array([[9, 1, 2, 3, 4, 5], [1, 9, 2, 3, 4, 5], [6, 5, 4, 3, 2, 1]], np.float32)
    labels = np.array([0, 0, 5])
    m = TopK()
    m.update(logits, labels)
    # sample 0: top-1 hit. sample 1: label 0 has the lowest score -> miss in top-5.
    # sample 2: label 5 has the lowest score -> miss in top-5.
    assert m.result() == {"top1": 100 / 3, "top5": 100 / 3}


def test_miou_ignores_255_and_averages_present_classes() -> None:
    labels = np.array([[[0, 0], [1, 255]]])
    pred = np.array([[[0, 1], [1, 1]]])
    logits = np.eye(3)[pred].transpose(0, 3, 1, 2)
    m = MeanIoU(3)
    m.update(logits, labels)
    # class 0: tp 1, fp 0, fn 1 -> 1/2; class 1: tp 1, fp 1 -> 1/2; class 2 absent.
    assert m.result()["miou"] == 50.0
    assert m.result()["pixel_accuracy"] == pytest.approx(100 * 2 / 3)


def test_agreement_per_sample() -> None:
    a = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    b = np.array([[1, 0], [1, 0], [1, 0]], np.float32)
    m = Agreement()
    m.update(a, b)
    assert m.result() == {"agreement": 100 * 2 / 3}
