"""Calibrators: statistics in, amax per tensor out.

Every calibrator has one contract (README, "Architecture"): ``collect(name, array)``,
``compute() -> {tensor: amax}``, ``reset()``, and its state is plain arrays
(``state_dict``). All four read the same `HistogramCollector`, so one pass over the
calibration data serves all of them: build the collector once (see
`quantpipe.calibration.collect.collect_statistics`) and hand it to each calibrator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from quantpipe.calibration.histogram import NUM_BINS, HistogramCollector, TensorHistogram
from quantpipe.calibration.search import entropy_amax, mse_amax, percentile_amax
from quantpipe.errors import QuantpipeError


@dataclass(frozen=True)
class MaxConfig:
    """amax = largest |x| seen (TensorRT MinMaxCalibration)."""

    name: ClassVar[str] = "max"


@dataclass(frozen=True)
class PercentileConfig:
    """amax = the given percentile of |x| (e.g. 99.9, 99.99, 99.999)."""

    name: ClassVar[str] = "percentile"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not 50.0 < p <= 100.0:
            raise QuantpipeError(
                f"percentile={p!r}: allowed values are numbers in (50, 100], e.g. 99.9, "
                "99.99, 99.999"
            )


@dataclass(frozen=True)
class EntropyConfig:
    """amax minimising KL divergence (TensorRT EntropyCalibration2)."""

    name: ClassVar[str] = "entropy"
    start_bin: int = 128

    def __post_init__(self) -> None:
        _check_start_bin(self.start_bin)


@dataclass(frozen=True)
class MseConfig:
    """amax minimising the expected INT8 quantization MSE (rounding + clipping)."""

    name: ClassVar[str] = "mse"
    start_bin: int = 128

    def __post_init__(self) -> None:
        _check_start_bin(self.start_bin)


CalibratorConfig = MaxConfig | PercentileConfig | EntropyConfig | MseConfig


def _check_start_bin(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < NUM_BINS:
        raise QuantpipeError(f"start_bin={value!r}: allowed values are integers in [1, {NUM_BINS})")


def config_params(config: CalibratorConfig) -> dict[str, Any]:
    """The parameters of a calibrator config as a plain dict (part of the cache key)."""
    return dataclasses.asdict(config)


class Calibrator:
    """Shared plumbing: a calibrator is a config plus a (possibly shared) collector."""

    config_type: ClassVar[type]

    def __init__(
        self, config: CalibratorConfig | None = None, collector: HistogramCollector | None = None
    ) -> None:
        self.config = config if config is not None else self.config_type()
        if not isinstance(self.config, self.config_type):
            raise QuantpipeError(
                f"{type(self).__name__} needs a {self.config_type.__name__}, "
                f"got {type(self.config).__name__}"
            )
        self.collector = collector if collector is not None else HistogramCollector()

    def collect(self, name: str, array: np.ndarray) -> None:
        self.collector.collect(name, array)

    def compute(self) -> dict[str, float]:
        """amax per tensor collected so far."""
        return {name: self.amax(stats) for name, stats in self.collector.stats.items()}

    def reset(self) -> None:
        self.collector.reset()

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        return self.collector.state_dict()

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        self.collector.load_state_dict(state)

    def amax(self, stats: TensorHistogram) -> float:
        raise NotImplementedError


class MaxCalibrator(Calibrator):
    config_type = MaxConfig

    def __init__(
        self, config: CalibratorConfig | None = None, collector: HistogramCollector | None = None
    ) -> None:
        # Alone, the max calibrator needs no histogram: skip its cost.
        super().__init__(config, collector or HistogramCollector(with_histogram=False))

    def amax(self, stats: TensorHistogram) -> float:
        return stats.amax


class PercentileCalibrator(Calibrator):
    config_type = PercentileConfig

    def amax(self, stats: TensorHistogram) -> float:
        assert isinstance(self.config, PercentileConfig)
        value = percentile_amax(stats.counts, stats.bin_width, self.config.percentile)
        return min(value, stats.amax)


class EntropyCalibrator(Calibrator):
    config_type = EntropyConfig

    def amax(self, stats: TensorHistogram) -> float:
        assert isinstance(self.config, EntropyConfig)
        # (i + 0.5) * width can pass the max by half a bin: clipping above the max only
        # wastes resolution.
        value = entropy_amax(stats.counts, stats.bin_width, self.config.start_bin)
        return min(value, stats.amax)


class MseCalibrator(Calibrator):
    config_type = MseConfig

    def amax(self, stats: TensorHistogram) -> float:
        assert isinstance(self.config, MseConfig)
        return mse_amax(stats.counts, stats.bin_width, self.config.start_bin)


CALIBRATORS: dict[str, type[Calibrator]] = {
    "max": MaxCalibrator,
    "percentile": PercentileCalibrator,
    "entropy": EntropyCalibrator,
    "mse": MseCalibrator,
}


def make_config(name: str, **params: Any) -> CalibratorConfig:
    """Build and validate the config of calibrator ``name`` (e.g. the CLI's ``--calibrator``).

    Raises:
        QuantpipeError: unknown name or parameter, or a bad value.
    """
    if name not in CALIBRATORS:
        raise QuantpipeError(f"calibrator {name!r}: allowed values are {sorted(CALIBRATORS)}")
    config_type = CALIBRATORS[name].config_type
    allowed = [f.name for f in dataclasses.fields(config_type)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise QuantpipeError(
            f"calibrator {name!r} has no parameter {unknown[0]!r}: allowed are {allowed}"
        )
    config: CalibratorConfig = config_type(**params)
    return config


def make_calibrator(
    config: CalibratorConfig, collector: HistogramCollector | None = None
) -> Calibrator:
    """The calibrator for ``config``; pass ``collector`` to share one collection pass."""
    return CALIBRATORS[config.name](config, collector)


def compute_all(
    collector: HistogramCollector, configs: Sequence[CalibratorConfig]
) -> dict[CalibratorConfig, dict[str, float]]:
    """amax tables of several calibrators from one collection pass."""
    return {config: make_calibrator(config, collector).compute() for config in configs}


def needs_histogram(configs: Sequence[CalibratorConfig]) -> bool:
    """Whether any of ``configs`` needs the |x| histogram (all but max do)."""
    return any(not isinstance(c, MaxConfig) for c in configs)
