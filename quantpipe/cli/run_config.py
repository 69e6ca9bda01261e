"""`quantpipe run` configs: a TOML file → validated, frozen stage configs."""

from __future__ import annotations

import inspect
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from quantpipe.engines.registry import DEFAULT_BACKEND, get_backend
from quantpipe.errors import QuantpipeError
from quantpipe.stages.bench import BenchConfig
from quantpipe.stages.btc import COMMON_KEYS, BtcConfig
from quantpipe.stages.btc_modes import BTC_MODES, mode_from_flags
from quantpipe.stages.engines import EnginesConfig
from quantpipe.stages.export import ExportConfig
from quantpipe.stages.mixed_session import MixedConfig
from quantpipe.stages.ptq import PtqConfig
from quantpipe.stages.qat import QatConfig
from quantpipe.stages.report import ReportConfig
from quantpipe.stages.training import TrainConfig
from quantpipe.stages.triton import TritonConfig

STAGES = (
    "train", "export", "btc", "ptq", "qat", "mixed", "eval", "engines", "triton", "bench",
    "report",
)  # fmt: skip


@dataclass(frozen=True)
class EvalPlan:
    split: str = "test"
    backends: tuple[str, ...] = (DEFAULT_BACKEND,)
    count: int | None = None

    def __post_init__(self) -> None:
        for b in self.backends:
            get_backend(b)  # an unknown name is refused, naming the known ones


@dataclass(frozen=True)
class RunConfig:
    name: str
    model: str
    data: str
    stages: tuple[str, ...]
    seed: int = 0
    weights: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    btc: BtcConfig = field(default_factory=BtcConfig)
    ptq: PtqConfig = field(default_factory=PtqConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    mixed: MixedConfig = field(default_factory=MixedConfig)
    eval: EvalPlan = field(default_factory=EvalPlan)
    engines: EnginesConfig = field(default_factory=EnginesConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise QuantpipeError(f"[run] stages: unknown {unknown}; allowed: {', '.join(STAGES)}")


def load_run_config(path: str | None) -> RunConfig:
    """Read `path` (or the built-in demo config) into a validated RunConfig."""
    text = (
        resources.files("quantpipe.configs").joinpath("demo.toml").read_text()
        if path is None
        else _read(Path(path))
    )
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise QuantpipeError(f"config {path}: not valid TOML ({e})") from None
    return _build(doc, path or "built-in demo")


def _read(path: Path) -> str:
    if not path.is_file():
        raise QuantpipeError(f"config file not found: {path}")
    return path.read_text()


def _build(doc: dict[str, Any], where: str) -> RunConfig:
    _only(doc, {"run", *STAGES}, where, "top level")
    run = dict(doc.get("run", {}))
    _only(run, {"name", "model", "data", "seed", "stages", "weights"}, where, "[run]")
    for key in ("name", "model", "data", "stages"):
        if key not in run:
            raise QuantpipeError(f"config {where}: [run] needs {key!r}")
    run["stages"] = tuple(run["stages"])
    return RunConfig(
        **run,
        train=_section(TrainConfig, doc.get("train", {}), where, "[train]"),
        export=_section(ExportConfig, doc.get("export", {}), where, "[export]"),
        btc=_btc_section(_tuples(doc.get("btc", {})), where),
        ptq=_section(PtqConfig, _tuples(doc.get("ptq", {})), where, "[ptq]"),
        qat=_flags(QatConfig.from_flags, doc.get("qat", {}), where, "[qat]"),
        mixed=_flags(MixedConfig.from_flags, _tuples(doc.get("mixed", {})), where, "[mixed]"),
        eval=_section(EvalPlan, _tuples(doc.get("eval", {})), where, "[eval]"),
        engines=_section(EnginesConfig, _tuples(doc.get("engines", {})), where, "[engines]"),
        triton=_flags(TritonConfig.from_flags, _tuples(doc.get("triton", {})), where, "[triton]"),
        bench=_section(BenchConfig, _tuples(doc.get("bench", {})), where, "[bench]"),
        report=_section(ReportConfig, _tuples(doc.get("report", {})), where, "[report]"),
    )


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _section(cls: type, values: dict[str, Any], where: str, name: str) -> Any:
    _only(values, {f.name for f in fields(cls)}, where, name)
    try:
        return cls(**values)
    except TypeError as e:
        raise QuantpipeError(f"config {where}: {name}: {e}") from None


def _flags(build: Any, values: dict[str, Any], where: str, name: str) -> Any:
    """A section whose keys are a `from_flags` builder's keyword arguments."""
    try:
        return build(**values)
    except TypeError as e:
        raise QuantpipeError(f"config {where}: {name}: {e}") from None


def _btc_section(values: dict[str, Any], where: str) -> BtcConfig:
    """`mode = NAME` with that mode's fields, or the CLI's flags; plus the common keys."""
    mode = values.get("mode")
    if mode is not None and mode not in BTC_MODES:
        raise QuantpipeError(
            f"config {where}: [btc] mode {mode!r} is unknown; use one of {', '.join(BTC_MODES)}"
        )
    mode_keys = (
        {f.name for f in fields(BTC_MODES[mode])}  # type: ignore[arg-type]
        if mode is not None
        else set(inspect.signature(mode_from_flags).parameters)
    )
    _only(values, mode_keys | set(COMMON_KEYS) | {"mode"}, where, "[btc]")
    return BtcConfig.from_flags(**values)


def _only(values: dict[str, Any], allowed: set[str], where: str, section: str) -> None:
    extra = sorted(set(values) - allowed)
    if extra:
        raise QuantpipeError(
            f"config {where}: {section} has unknown key(s) {', '.join(extra)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
