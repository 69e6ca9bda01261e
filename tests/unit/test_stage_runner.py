import json
from pathlib import Path

import pytest

from quantpipe.errors import CorruptArtifactError, RunDirLockedError
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext, run_stage


def _writer(calls: list[int], text: str = "out"):
    def body(ctx: StageContext) -> dict:
        calls.append(1)
        ctx.output("result.txt").write_text(text)
        return {"value": len(calls)}

    return body


def test_second_run_with_same_inputs_and_params_is_skipped(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        first = run_stage(run, "s", {"in": inp}, {"p": 1}, _writer(calls))
        second = run_stage(run, "s", {"in": inp}, {"p": 1}, _writer(calls))
    assert (first.skipped, second.skipped, len(calls)) == (False, True, 1)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    out = manifest["stages"]["s"]["outputs"][0]
    assert out["path"] == "result.txt" and out["bytes"] == 3 and len(out["sha256"]) == 64
    assert manifest["stages"]["s"]["inputs"][0]["sha256"] == first.record.inputs[0].sha256
    assert "onnxruntime" in manifest["stages"]["s"]["versions"]


@pytest.mark.parametrize("change", ["param", "input", "output", "force"])
def test_any_change_reruns(tmp_path: Path, change: str) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        run_stage(run, "s", {"in": inp}, {"p": 1}, _writer(calls))
        params, force = {"p": 1}, False
        if change == "param":
            params = {"p": 2}
        elif change == "input":
            inp.write_text("other data")
        elif change == "output":
            (run.path / "result.txt").write_text("tampered")
        else:
            force = True
        again = run_stage(run, "s", {"in": inp}, params, _writer(calls), force=force)
    assert not again.skipped and len(calls) == 2


def test_failing_stage_keeps_previous_outputs_and_manifest(tmp_path: Path) -> None:
    calls: list[int] = []
    with RunDir.open(tmp_path / "run") as run:
        run_stage(run, "s", {}, {"p": 1}, _writer(calls, "good"))
        before = (run.path / "manifest.json").read_text()

        def broken(ctx: StageContext) -> dict:
            ctx.output("result.txt").write_text("partial")
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_stage(run, "s", {}, {"p": 2}, broken)
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
