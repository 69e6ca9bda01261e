import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from quantpipe.errors import CorruptArtifactError, RunDirLockedError
from quantpipe.pipeline.atomic import atomic_write_bytes
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import RunOptions, StageContext, run_stage


@dataclass(frozen=True)
class Counted(JsonResult):
    value: int


@dataclass(frozen=True)
class Writer:
    """A stage that writes `text` to result.txt and counts its runs in `calls`."""

    calls: list[int]
    files: dict[str, Path] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    text: str = "out"
    interrupt: bool = False
    kind: ClassVar[str] = "writer"
    result_type: ClassVar[type[Counted]] = Counted
    name: str = "s"

    def inputs(self, run: RunDir) -> dict[str, Path]:
        return self.files

    def params(self) -> dict[str, Any]:
        return self.parameters

    def run(self, ctx: StageContext) -> Counted:
        self.calls.append(1)
        ctx.output("result.txt").write_text(self.text)
        if self.interrupt:
            raise KeyboardInterrupt
        return Counted(len(self.calls))


def test_second_run_with_same_inputs_and_params_is_skipped(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    calls: list[int] = []
    stage = Writer(calls, {"in": inp}, {"p": 1})
    with RunDir.open(tmp_path / "run") as run:
        first = run_stage(run, stage)
        second = run_stage(run, stage)
    assert (first.skipped, second.skipped, len(calls)) == (False, True, 1)
    assert second.result == Counted(1)  # the recorded result comes back typed
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    record = manifest["stages"]["s"]
    out = record["outputs"][0]
    assert out["path"] == "result.txt" and out["bytes"] == 3 and len(out["sha256"]) == 64
    assert record["inputs"][0]["sha256"] == first.record.inputs[0].sha256
    assert "onnxruntime" in record["versions"]
    assert (manifest["format"], record["stage"], record["results"]) == (2, "writer", {"value": 1})


@pytest.mark.parametrize("change", ["param", "input", "output", "force"])
def test_any_change_reruns(tmp_path: Path, change: str) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        run_stage(run, Writer(calls, {"in": inp}, {"p": 1}))
        params, force = {"p": 1}, False
        if change == "param":
            params = {"p": 2}
        elif change == "input":
            inp.write_text("other data")
        elif change == "output":
            (run.path / "result.txt").write_text("tampered")
        else:
            force = True
        again = run_stage(run, Writer(calls, {"in": inp}, params), RunOptions(force=force))
    assert not again.skipped and len(calls) == 2


def test_failing_stage_keeps_previous_outputs_and_manifest(tmp_path: Path) -> None:
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        run_stage(run, Writer(calls, parameters={"p": 1}, text="good"))
        before = (run.path / "manifest.json").read_text()
        broken = Writer(calls, parameters={"p": 2}, text="partial", interrupt=True)
        with pytest.raises(KeyboardInterrupt):
            run_stage(run, broken)
        assert (run.path / "result.txt").read_text() == "good"
        assert (run.path / "manifest.json").read_text() == before
        assert sorted(p.name for p in run.path.iterdir()) == [
            ".lock",
            "manifest.json",
            "result.txt",
        ]


def test_second_holder_of_run_directory_is_refused(tmp_path: Path) -> None:
    with RunDir.open(tmp_path / "run"), pytest.raises(RunDirLockedError, match="in use by another"):
        RunDir.open(tmp_path / "run")
    RunDir.open(tmp_path / "run").close()  # released: can be taken again


def test_corrupt_manifest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="not a valid quantpipe manifest"):
        RunDir.open(tmp_path / "run")


def test_a_recorded_result_of_another_form_is_a_clear_error(tmp_path: Path) -> None:
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        run_stage(run, Writer(calls))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest["stages"]["s"]["results"] = {"value": "many"}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    with RunDir.open(tmp_path / "run") as run, pytest.raises(CorruptArtifactError, match="value"):
        run_stage(run, Writer(calls))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_umasks_mode_not_the_temporary_files(tmp_path: Path, umask: int) -> None:
    # Temporary files are created 0600; an engine that only its builder can read cannot be
    # served by a container running as another user.
    old = os.umask(umask)
    try:
        with RunDir.open(tmp_path / "run") as run:
            run_stage(run, Writer([]))
        atomic_write_bytes(tmp_path / "atomic.bin", b"x")
    finally:
        os.umask(old)
    for path in (tmp_path / "run" / "result.txt", tmp_path / "atomic.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@dataclass(frozen=True)
class TwoWriter(Writer):
    """Writes `text` to a.txt and b.txt: a stage whose commit is two renames."""

    def run(self, ctx: StageContext) -> Counted:
        self.calls.append(1)
        for name in ("a.txt", "b.txt"):
            ctx.output(name).write_text(self.text)
        return Counted(len(self.calls))


def test_a_crash_between_two_renames_leaves_no_record_claiming_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        run_stage(run, TwoWriter(calls, text="old"))
    renames: list[str] = []

    def die_on_the_second(src: str, dst: str) -> None:
        # What a SIGKILL or power loss between the two renames leaves behind.
        if Path(dst).suffix == ".txt":
            if renames:
                raise SystemExit("killed")
            renames.append(dst)
        real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", die_on_the_second)
    with pytest.raises(SystemExit), RunDir.open(tmp_path / "run") as run:
        run_stage(run, TwoWriter(calls, text="new", parameters={"p": 2}))
    monkeypatch.undo()
    texts = [(tmp_path / "run" / n).read_text() for n in ("a.txt", "b.txt")]
    assert texts == ["new", "old"]  # the kill landed between the renames
    with RunDir.open(tmp_path / "run") as run:
        assert "s" not in run.manifest.stages  # nothing vouches for the mixed pair
        again = run_stage(run, TwoWriter(calls, text="new", parameters={"p": 2}))
    assert not again.skipped
    assert [(tmp_path / "run" / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "new"]


def test_opening_a_run_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    leftovers = [run_path / ".model.onnx.k2j3.tmp", run_path / "calib" / ".ab12.json.x9.tmp"]
    kept = [run_path / ".profile", run_path / "notes.tmp", run_path / "model.onnx"]
    for path in [*leftovers, *kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    scratch = run_path / ".scratch-q8w1"
    (scratch / "deep").mkdir(parents=True)
    (scratch / "deep" / "candidate.onnx").write_text("x")
    with RunDir.open(run_path):
        pass
    assert not any(p.exists() for p in [*leftovers, scratch])
    assert all(p.is_file() for p in kept)
