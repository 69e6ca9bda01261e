"""`triton`: the run's engines as a Triton Inference Server model repository.

For each selected engine of the `engines` stage that Triton serves natively (ONNX Runtime
and TensorRT engines), `triton/<model>/config.pbtxt` (see `serving/triton_config.py`) and
`triton/<model>/1/model.onnx` or `model.plan`, the engine's bytes checked against its
metadata. The repository is written inside the run like every stage's outputs (complete or
absent); `quantpipe triton --out DIR` then copies it where a server reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import TRITON_DIR, TRITON_PYTHON_DIR
from quantpipe.engines.metadata import EngineMeta, load_engine, meta_path
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.serving.selection import run_engines
from quantpipe.serving.triton_config import PLATFORMS, ServingOptions, model_name

VERSION = "1"  # each model's one version directory


@dataclass(frozen=True)
class TritonConfig:
    select: tuple[str, ...] = ()  # engine file-name patterns (fnmatch); none: every servable
    serving: ServingOptions = field(default_factory=ServingOptions)
    python_backend: bool = False  # also <model>_python in triton-python/: any quantpipe runner

    @staticmethod
    def from_flags(
        select: tuple[str, ...] = (), python_backend: bool = False, **serving: Any
    ) -> TritonConfig:
        """From a run config's [triton] keys: `select`, `python_backend` and ServingOptions'
        fields."""
        return TritonConfig(tuple(select), ServingOptions(**serving), python_backend)


@dataclass(frozen=True)
class TritonModel:
    name: str
    engine: str
    platform: str
    max_batch_size: int
    device: str  # cpu or gpu
    file: str  # the model file, relative to the run


@dataclass(frozen=True)
class Skipped:
    engine: str
    reason: str


@dataclass(frozen=True)
class TritonResult(JsonResult):
    repository: str  # relative to the run (Python-backend variants: triton-python/)
    models: list[TritonModel]
    skipped: list[Skipped]

    def lines(self) -> list[str]:
        lines = [
            f"{Path(m.file).parents[1]}: {m.platform} on {m.device}, max batch "
            f"{m.max_batch_size}, from {m.engine}"
            for m in self.models
        ]
        lines += [f"not in the repository: {s.engine}: {s.reason}" for s in self.skipped]
        return lines


@dataclass(frozen=True)
class TritonStage:
    config: TritonConfig = field(default_factory=TritonConfig)
    kind: ClassVar[str] = "triton"
    name: ClassVar[str] = kind
    result_type: ClassVar[type[TritonResult]] = TritonResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        files = {}
        for engine in self._selected(run):
            files[f"engine {engine.name}"] = engine
            files[f"metadata {engine.name}"] = meta_path(engine)
        return files

    def params(self) -> dict[str, Any]:
        return asdict(self.config)

    def run(self, ctx: StageContext) -> TritonResult:
        models, skipped = [], []
        for engine in self._selected(ctx.run):
            meta = load_engine(engine, on_this_host=False)  # packaged here, served elsewhere
            if meta.backend in PLATFORMS:
                models.append(_native(ctx, engine, meta, self.config.serving))
            else:
                skipped.append(Skipped(engine.name, f"{meta.backend} has no Triton backend"))
            if self.config.python_backend:
                models.append(_python(ctx, engine, meta, self.config.serving))
        if not models:
            raise QuantpipeError(
                f"none of the selected engines can be served by Triton ({len(skipped)} skipped): "
                "build ONNX Runtime or TensorRT engines with `quantpipe engines`, or add "
                "--python-backend"
            )
        return TritonResult(TRITON_DIR, models, skipped)

    def _selected(self, run: RunDir) -> list[Path]:
        return run_engines(run.path, self.config.select)


def _native(
    ctx: StageContext, engine: Path, meta: EngineMeta, serving: ServingOptions
) -> TritonModel:
    """The engine served by Triton's own backend: triton/<model>/1/model.onnx|.plan."""
    from quantpipe.serving.triton_config import model_config, to_text

    served, name = PLATFORMS[meta.backend], model_name(meta)
    config = model_config(name, meta, serving)
    ctx.output(f"{TRITON_DIR}/{name}/config.pbtxt").write_text(to_text(config))
    rel = f"{TRITON_DIR}/{name}/{VERSION}/{served.file}"
    ctx.output(rel).write_bytes(engine.read_bytes())
    return TritonModel(name, engine.name, served.name, config.max_batch_size, served.device, rel)


def _python(
    ctx: StageContext, engine: Path, meta: EngineMeta, serving: ServingOptions
) -> TritonModel:
    """The engine served by Triton's Python backend through quantpipe's runner:
    triton-python/<model>_python/1/model.py with the engine and its metadata beside it."""
    from quantpipe.serving.triton_config import PYTHON_SUFFIX, model_config, to_text

    name = model_name(meta) + PYTHON_SUFFIX
    config = model_config(name, meta, serving, python_backend=True)
    root = f"{TRITON_PYTHON_DIR}/{name}"
    ctx.output(f"{root}/config.pbtxt").write_text(to_text(config))
    # Read, not imported: it imports Triton's Python-backend module, which exists only there.
    code = (resources.files("quantpipe.serving") / "triton_python_model.py").read_text()
    ctx.output(f"{root}/{VERSION}/model.py").write_text(code)
    ctx.output(f"{root}/{VERSION}/{engine.name}").write_bytes(engine.read_bytes())
    ctx.output(f"{root}/{VERSION}/{meta_path(engine).name}").write_bytes(
        meta_path(engine).read_bytes()
    )
    device = PLATFORMS[meta.backend].device if meta.backend in PLATFORMS else "cpu"
    rel = f"{root}/{VERSION}/model.py"
    return TritonModel(name, engine.name, "python", config.max_batch_size, device, rel)
