"""Progress bars: one line per bar when output is redirected, nothing with --quiet."""

from __future__ import annotations

import pytest

from quantpipe.progress import ProgressBar, track


def test_redirected_output_gets_one_line_per_bar(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track(range(500), "train epoch 1/5", True, unit="step")) == list(range(500))
    with ProgressBar("eval onnxruntime-cpu", 10_000, True, "img") as bar:
        for _ in range(40):
            bar.update(250)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "\r" not in "".join(err)
    assert err[0].startswith("train epoch 1/5: 500 step in ")
    assert err[1].startswith("eval onnxruntime-cpu: 10,000 img in ")


def test_quiet_prints_nothing_and_a_failed_loop_no_done_line(capsys) -> None:
    list(track(range(10), "quiet", False))
    with pytest.raises(RuntimeError), ProgressBar("failing", 10, True) as bar:
        bar.update()
        raise RuntimeError
    assert capsys.readouterr().err == ""
