"""`ptq --calibrator auto`'s choice (quantpipe.stages.ptq_scoring.choose)."""

from __future__ import annotations

from quantpipe.stages.ptq_result import CalibratorScores
from quantpipe.stages.ptq_scoring import choose


def _scores(**rows: tuple[float, float]) -> dict[str, CalibratorScores]:
    return {name: CalibratorScores(val, val, kl) for name, (val, kl) in rows.items()}


def test_the_lowest_kl_is_kept_when_its_accuracy_is_within_noise() -> None:
    scored = _scores(entropy=(90.0, 0.010), percentile=(90.4, 0.012), max=(89.0, 0.05))
    # One standard error at 90 % on 1,000 samples is 0.95 points.
    assert choose(scored, 1000, "classification") == "entropy"


def test_a_clearly_more_accurate_calibrator_wins_over_the_lowest_kl() -> None:
    # The EfficientNet-B0 case: entropy had the lowest KL and lost 1.4 points more.
    scored = _scores(entropy=(76.0, 0.020), percentile=(77.4, 0.025), mse=(77.0, 0.03))
    assert choose(scored, 4000, "classification") == "percentile"


def test_segmentation_keeps_the_kl_choice() -> None:
    scored = _scores(entropy=(60.0, 0.01), mse=(75.0, 0.02))
    assert choose(scored, 2500, "segmentation") == "entropy"


def test_ties_are_broken_by_name_so_the_choice_is_reproducible() -> None:
    scored = _scores(mse=(80.0, 0.01), max=(80.0, 0.01))
    assert choose(scored, 1000, "classification") == "max"
