"""`manifest.json`: what each stage read, with which parameters, and what it wrote.

Paths inside the run directory are stored relative to it, so a run directory can be
moved or archived whole.

Format 2 records each stage's kind (`stage`: "eval" for the record `eval.fp32.onnxruntime-cpu`)
and an eval result's metric, artifact and backend; format 1 manifests (quantpipe before
the Stage contract) are read by `_upgrade_v1`, which derives them the one way format 1
allowed, from record names and result keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantpipe.errors import CorruptArtifactError
from quantpipe.pipeline.atomic import atomic_write_json

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
_HEADLINE_KEYS = ("top1", "miou", "agreement")  # format 1: which key an eval result had


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    bytes: int | None = None


@dataclass(frozen=True)
class StageRecord:
    name: str
    stage: str
    inputs: list[FileRecord]
    params: dict[str, Any]
    outputs: list[FileRecord]
    results: dict[str, Any]
    wall_s: float
    versions: dict[str, str]
    finished_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> StageRecord:
        return StageRecord(
            name=d["name"],
            stage=d["stage"],
            inputs=[FileRecord(**f) for f in d["inputs"]],
            params=d["params"],
            outputs=[FileRecord(**f) for f in d["outputs"]],
            results=d.get("results", {}),
            wall_s=float(d["wall_s"]),
            versions=d.get("versions", {}),
            finished_at=d.get("finished_at", ""),
        )


@dataclass
class Manifest:
    run_dir: Path
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @staticmethod
    def load(run_dir: Path) -> Manifest:
        path = run_dir / MANIFEST_NAME
        if not path.exists():
            return Manifest(run_dir)
        try:
            data = json.loads(path.read_text())
            records = data["stages"]
            if data.get("format", 1) == 1:
                records = {k: _upgrade_v1(v) for k, v in records.items()}
            elif data["format"] != FORMAT_VERSION:
                raise ValueError(f"format {data['format']} is newer than this quantpipe reads")
            stages = {k: StageRecord.from_dict(v) for k, v in records.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptArtifactError(
                f"{path} is not a valid quantpipe manifest ({e}); move it away to start the "
                "run afresh"
            ) from None
        return Manifest(run_dir, stages)

    def record(self, stage: StageRecord) -> None:
        """Store a finished stage and rewrite the manifest atomically."""
        self.stages[stage.name] = stage
        self._write()

    def forget(self, name: str) -> None:
        """Drop a stage's record and rewrite the manifest atomically."""
        if self.stages.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        atomic_write_json(
            self.path,
            {
                "format": FORMAT_VERSION,
                "run": self.run_dir.name,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
            },
        )


def _upgrade_v1(record: dict[str, Any]) -> dict[str, Any]:
    """A format 1 stage record in format 2: its kind from its name, and for eval records
    the metric, artifact and backend that format 1 encoded in keys and the name."""
    kind = record["name"].split(".", 1)[0]
    upgraded = {**record, "stage": kind}
    if kind == "eval":
        artifact, backend = record["name"].removeprefix("eval.").rsplit(".", 1)
        results = record.get("results", {})
        metric = next((k for k in _HEADLINE_KEYS if k in results), None)
        if metric is None:
            raise KeyError(f"{record['name']}: no top1, miou or agreement result")
        upgraded["results"] = {
            **results,
            "metric": metric,
            "artifact": artifact,
            "backend": backend,
        }
    return upgraded
