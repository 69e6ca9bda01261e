"""The house rules that keep quantpipe livable, checked: no import cycle, one backend
registry, one Stage contract."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from quantpipe.pipeline.results import JsonResult
from tests.conftest import ROOT

PACKAGE = ROOT / "quantpipe"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every quantpipe module `path` imports, anywhere in the file (lazy imports inside
    functions and TYPE_CHECKING blocks included: a cycle through them is still a cycle
    of dependencies)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(files)) - {m} for m, p in files.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 80  # the walk found the package
    assert _find_cycle(graph) is None, " → ".join(_find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_backend_names_and_kinds_are_owned_by_the_registry() -> None:
    pattern = re.compile(r'startswith\("torch"\)|BACKENDS')
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "registry.py" or p.parent.name != "engines"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def _stage_classes() -> list[type]:
    from quantpipe.stages.bench import BenchStage
    from quantpipe.stages.btc import BtcStage
    from quantpipe.stages.calibrate import CalibrateStage
    from quantpipe.stages.engines import EnginesStage
    from quantpipe.stages.evaluate import EvalStage
    from quantpipe.stages.export import ExportStage
    from quantpipe.stages.mixed import MixedStage
    from quantpipe.stages.ptq import PtqStage
    from quantpipe.stages.qat import QatStage
    from quantpipe.stages.report import ReportStage
    from quantpipe.stages.train import TrainStage
    from quantpipe.stages.triton import TritonStage

    stages = [TrainStage, ExportStage, EvalStage, BtcStage, CalibrateStage, PtqStage]
    stages += [QatStage, MixedStage]
    return [*stages, EnginesStage, TritonStage, BenchStage, ReportStage]


@pytest.mark.parametrize("stage", _stage_classes(), ids=lambda s: s.kind)
def test_every_stage_has_the_same_contract(stage: type) -> None:
    params = dataclasses.fields(stage)
    assert stage.__dataclass_params__.frozen  # type: ignore[attr-defined]
    config = next(f for f in params if f.name == "config")
    assert config.default_factory is not dataclasses.MISSING  # a default config exists
    config_type = type(config.default_factory())
    assert dataclasses.is_dataclass(config_type) and config_type.__dataclass_params__.frozen
    assert isinstance(stage.kind, str) and issubclass(stage.result_type, JsonResult)
    for method in ("inputs", "params", "run"):
        assert callable(getattr(stage, method))
    # The manifest record's name: fixed for once-per-run stages, per instance for the others.
    assert isinstance(stage.name, str | property)


def test_the_parsers_calibrator_names_are_the_registrys() -> None:
    # The parser spells them out so that --help does not import the calibration package.
    from quantpipe.calibration import CALIBRATORS
    from quantpipe.cli.parser import CALIBRATORS as LISTED

    assert tuple(CALIBRATORS) == LISTED
