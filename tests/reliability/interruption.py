"""The interruption harness: every stage, stopped at any moment, keeps the run directory true.

A small digits-mlp run is built stage by stage (train → export → btc → calibrate → ptq → qat
→ mixed → engines → bench → report → triton), with a copy of the run directory before each
stage. Then each trial copies the state before one stage, starts that stage as a real
`quantpipe` process, and stops it:

- `KILL` (SIGKILL to its process group: a crash, the OOM killer, power loss),
- `INT` (SIGINT to its process group: Ctrl-C), `TERM` (SIGTERM to the process: `kill`,
  `docker stop`),
- `FSIZE` (no signal: the file-size limit `ulimit -f` set below the stage's largest
  output, so a write fails as on a full disk),

at a *trigger*: a fraction of the stage's uninterrupted duration (`0.1`, `0.5`, `0.9`), the
moment its first temporary file appears (`temp`: inside its writes), or the moment it starts
rewriting the manifest (`commit`: between its renames and its record). Then it checks:

1. the manifest parses, and every file any record lists exists with the recorded sha256;
2. every record the run had before the stage is still there (earlier work is never lost);
3. every other file under a final name is either the one that was there before or the one
   the uninterrupted stage wrote (bit for bit where the stage is deterministic);
4. after INT/TERM/FSIZE: exit 130/143/2, one line on stderr and no traceback, and no
   temporary file left in the run directory or in $TMPDIR; after KILL temporaries may remain;
5. rerunning the stage succeeds, removes every temporary file, and writes what the
   uninterrupted run wrote (bit-identical unless the stage is in NONDETERMINISTIC).

Run `python tests/reliability/interruption.py --plan full --out FILE.json` (`make
bench-reliability`); tests/integration/test_interruption.py runs the quick plan in CI.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantpipe.engines.machine import cpu_info
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.atomic import SCRATCH_PREFIX, TEMP_SUFFIX
from quantpipe.pipeline.manifest import MANIFEST_NAME, Manifest

DATA = ["--data", "digits"]
# The stages in run order, as `quantpipe` arguments (the run directory is added).
STAGES: dict[str, list[str]] = {
    "train": ["train", "--model", "digits-mlp", *DATA, "--epochs", "2"],
    "export": ["export", "--model", "digits-mlp", *DATA],
    "btc": ["btc", "--model", "digits-mlp", *DATA],
    "calibrate": ["calibrate", *DATA, "--calib-count", "64"],
    "ptq": ["ptq", *DATA, "--calib-count", "64"],
    "qat": ["qat", *DATA, "--epochs", "1"],
    "mixed": ["mixed", *DATA],
    "engines": ["engines", "--batch-sizes", "1,16"],
    "bench": ["bench", *DATA, "--batch-sizes", "1", "--duration", "0.2"],
    "report": ["report"],
    "triton": ["triton"],
}
# Outputs that differ between two uninterrupted runs (stage: file patterns, why); for these
# the rerun must write the same files, not the same bytes. Everything else is bit-identical.
NONDETERMINISTIC = {
    "bench": (("*",), "its outputs are latencies measured now"),
    "engines": (("engines/*.json",), "each engine's metadata records when and how fast it built"),
    "qat": (("qat/*.checkpoint.pt",), "the resume checkpoint records each epoch's wall time"),
}
# What libraries leave in $TMPDIR on purpose (caches, session ids), not temporary files.
_LIBRARY_STATE = ("torchinductor_*", ".ses")
RUN_NAME = "run"  # every copy has the same name: the report prints it
EXPECTED_WAYS = ("KILL", "INT", "TERM", "FSIZE")
EXPECTED_EXIT = {"INT": 130, "TERM": 143, "FSIZE": 2}
_LOCK = ".lock"


@dataclass(frozen=True)
class Trial:
    stage: str
    how: str  # KILL, INT, TERM or FSIZE
    trigger: str  # "0.1", "0.5", "0.9", "temp", "commit" or "" (FSIZE: none)

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.how}-{self.trigger or 'limit'}"


@dataclass
class TrialResult:
    trial: Trial
    stopped_while_running: bool = False  # False: the stage finished before the trigger
    exit_code: int | None = None
    files_checked: int = 0
    temporaries_left: int = 0  # by the stopped process (allowed after KILL only)
    rerun_identical: bool | None = None
    problems: list[str] = field(default_factory=list)
    attempts: int = 1  # runs of the trial until its stop landed mid-run (see run_plan)


def quick_plan() -> list[Trial]:
    """CI: every stage killed inside its writes, every way of stopping on a few stages."""
    trials = [Trial(stage, "KILL", "temp") for stage in STAGES]
    # Inside their writes, not at a fraction of their time: a stop at 50 % could come as a
    # short stage exits, and CI asserts that every trial stopped a stage mid-run.
    trials += [Trial(s, "INT", "temp") for s in ("ptq", "engines")]
    trials += [Trial(s, "TERM", "temp") for s in ("btc", "triton")]
    trials += [Trial(s, "FSIZE", "") for s in ("export", "ptq")]
    return trials


def full_plan() -> list[Trial]:
    """`make bench-reliability`: every stage, every way, every trigger."""
    trials = []
    for stage in STAGES:
        for trigger in ("0.1", "0.5", "0.9", "temp", "commit"):
            trials.append(Trial(stage, "KILL", trigger))
        for how in ("INT", "TERM"):
            trials += [Trial(stage, how, trigger) for trigger in ("0.5", "temp")]
        trials.append(Trial(stage, "FSIZE", ""))
    return trials


@dataclass(frozen=True)
class Chain:
    """The run directory before each stage (`before[stage]`), after the last one, and how
    long each stage took uninterrupted."""

    work: Path
    durations: dict[str, float]

    def before(self, stage: str) -> Path:
        return self.work / f"before-{stage}"

    def after(self, stage: str) -> Path:
        names = list(STAGES)
        i = names.index(stage)
        return self.before(names[i + 1]) if i + 1 < len(names) else self.work / "after-all"


def build_chain(work: Path) -> Chain:
    """Run every stage once, uninterrupted, keeping a copy of the run before each."""
    run = work / "chain" / RUN_NAME
    durations = {}
    for stage in STAGES:
        _copy_run(run, work / f"before-{stage}")
        start = time.perf_counter()
        proc = _start(stage, run, work / "tmp-chain")
        _, err = proc.communicate()
        durations[stage] = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"uninterrupted {stage} failed ({proc.returncode}): {err[-2000:]}")
    _copy_run(run, work / "after-all")
    return Chain(work, durations)


def run_trial(chain: Chain, trial: Trial) -> TrialResult:
    result = TrialResult(trial)
    run = chain.work / "trials" / trial.name / RUN_NAME
    tmpdir = chain.work / "tmp-trials" / trial.name
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(tmpdir, ignore_errors=True)  # a trial run again starts clean
    _copy_run(chain.before(trial.stage), run)
    before = _files(run)
    limit = _size_limit(chain, trial.stage) if trial.how == "FSIZE" else None
    proc = _start(trial.stage, run, tmpdir, limit)
    if limit is None:
        result.stopped_while_running = _stop_at(proc, run, trial, chain.durations[trial.stage])
    _, err = proc.communicate()
    result.exit_code = proc.returncode
    if trial.how == "FSIZE":
        result.stopped_while_running = proc.returncode != 0
    elif trial.how in ("INT", "TERM") and proc.returncode == 0:
        # The signal came as the finished command exited, when quantpipe ignores it (see
        # cli.program): the stage's work was done; check_run_dir checks it like any other.
        result.stopped_while_running = False
    temporaries = _temporaries(run) + _temporaries(tmpdir, anywhere=True)
    result.temporaries_left = len(temporaries)
    if result.stopped_while_running:
        result.problems += _check_exit(trial, proc.returncode, err, temporaries)
    elif proc.returncode != 0:
        result.problems.append(f"finished before the trigger but exited {proc.returncode}")
    checked, problems = check_run_dir(run, chain, trial.stage, before)
    result.files_checked, result.problems = checked, result.problems + problems
    result.rerun_identical, problems = _rerun(chain, trial, run, tmpdir)
    result.problems += problems
    if not result.problems:
        shutil.rmtree(run.parent, ignore_errors=True)  # keep only what failed, to look at
    return result


def check_run_dir(
    run: Path, chain: Chain, stage: str, before: dict[str, str]
) -> tuple[int, list[str]]:
    """Checks 1–3 of the module docstring; returns (files checked, problems)."""
    try:
        manifest = Manifest.load(run)
    except QuantpipeError as e:
        return 0, [f"manifest: {e}"]
    problems, checked, listed = [], 0, set()
    now = _files(run)
    for record in manifest.stages.values():
        for out in record.outputs:
            checked += 1
            listed.add(out.path)
            if now.get(out.path) != out.sha256:
                problems.append(f"{record.name} lists {out.path}, which is missing or differs")
    earlier = Manifest.load(chain.before(stage)).stages
    for name in earlier:
        if name != stage and name not in manifest.stages:
            problems.append(f"the record of the earlier stage {name} was lost")
    finished = _files(chain.after(stage))
    for rel, sha in now.items():
        if rel in listed or before.get(rel) == sha:
            continue
        checked += 1
        if rel not in finished or (_exact(stage, rel) and finished[rel] != sha):
            problems.append(f"{rel} is neither the earlier file nor the finished stage's")
    return checked, problems


def _stop_at(proc: subprocess.Popen[str], run: Path, trial: Trial, duration: float) -> bool:
    """Wait for the trigger, then stop the process; False if it finished first."""
    if trial.trigger in ("temp", "commit"):
        seen = _first_temporary if trial.trigger == "temp" else _manifest_rewrite
        while not seen(run):
            if proc.poll() is not None:
                return False
            time.sleep(0.001)
    else:
        try:
            proc.wait(timeout=float(trial.trigger) * duration)
            return False
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is not None:
        return False
    if trial.how == "TERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGKILL if trial.how == "KILL" else signal.SIGINT)
    return True


def _check_exit(trial: Trial, code: int, err: str, temporaries: list[Path]) -> list[str]:
    if trial.how == "KILL":
        return [] if code == -signal.SIGKILL else [f"exit {code} after SIGKILL"]
    problems = []
    if code != EXPECTED_EXIT[trial.how]:
        problems.append(f"exit {code}, expected {EXPECTED_EXIT[trial.how]}")
    lines = err.strip().splitlines()
    if "Traceback" in err or len(lines) != 1 or not lines[0].startswith("quantpipe "):
        problems.append(f"stderr is not one line: {err[-1500:]!r}")
    if temporaries:
        problems.append(f"left temporary files: {[str(p) for p in temporaries]}")
    return problems


def _rerun(chain: Chain, trial: Trial, run: Path, tmpdir: Path) -> tuple[bool | None, list[str]]:
    """Check 5: the stage reruns to the uninterrupted result."""
    proc = _start(trial.stage, run, tmpdir)
    _, err = proc.communicate()
    if proc.returncode != 0:
        return None, [f"rerun failed ({proc.returncode}): {err[-1500:]}"]
    problems = [f"rerun left {p}" for p in _temporaries(run) + _temporaries(tmpdir, True)]
    mine = _outputs(Manifest.load(run), trial.stage)
    theirs = _outputs(Manifest.load(chain.after(trial.stage)), trial.stage)
    if mine.keys() != theirs.keys():
        problems.append(f"rerun wrote {sorted(mine)}, the uninterrupted run {sorted(theirs)}")
    differ = sorted(k for k in mine if mine[k] != theirs.get(k))
    unexpected = [k for k in differ if _exact(trial.stage, k)]
    if unexpected:
        problems.append(f"rerun differs from the uninterrupted run in {unexpected}")
    return not differ, problems


def _exact(stage: str, rel: str) -> bool:
    """Whether the uninterrupted stage writes `rel` the same, bit for bit, every time."""
    patterns, _ = NONDETERMINISTIC.get(stage, ((), ""))
    return not any(fnmatch.fnmatch(rel, p) for p in patterns)


def _outputs(manifest: Manifest, stage: str) -> dict[str, str]:
    record = manifest.stages.get(stage)
    return {} if record is None else {o.path: o.sha256 for o in record.outputs}


def _start(
    stage: str, run: Path, tmpdir: Path, size_limit: int | None = None
) -> subprocess.Popen[str]:
    tmpdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "quantpipe", *STAGES[stage], "--quiet", "--run-dir", str(run)]
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a shell job would be
        preexec_fn=_as_a_foreground_job(size_limit),
    )


def _as_a_foreground_job(size_limit: int | None) -> Callable[[], None]:
    """What the child gets before it starts: SIGINT's default action (a harness started in
    the background, e.g. under nohup, passes on an *ignored* SIGINT, and Python then never
    raises KeyboardInterrupt), and the file-size limit, if any."""

    def apply() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (size_limit, size_limit))

    return apply


def _size_limit(chain: Chain, stage: str) -> int:
    """Half the stage's largest output: that write fails, as on a full disk."""
    record = Manifest.load(chain.after(stage)).stages[stage]
    largest = max(o.bytes or (chain.after(stage) / o.path).stat().st_size for o in record.outputs)
    return max(1, largest // 2)


def _first_temporary(run: Path) -> bool:
    return bool(_temporaries(run))


def _manifest_rewrite(run: Path) -> bool:
    return any(p.name.startswith(f".{MANIFEST_NAME}.") for p in run.iterdir())


def _temporaries(root: Path, anywhere: bool = False) -> list[Path]:
    """Temporary files and scratch directories under `root` (`anywhere`: every entry, for a
    $TMPDIR that should be empty)."""
    if not root.is_dir():
        return []
    if anywhere:
        return sorted(
            p for p in root.iterdir() if not any(fnmatch.fnmatch(p.name, s) for s in _LIBRARY_STATE)
        )
    return [p for p in _walk(root) if _is_temporary(p.name)]


def _is_temporary(name: str) -> bool:
    return (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or name.startswith(SCRATCH_PREFIX)


def _walk(root: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in entries:
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))


def _files(run: Path) -> dict[str, str]:
    """sha256 of every file under a final name (not the lock, manifest or temporaries)."""
    files = {}
    for path in _walk(run):
        rel = path.relative_to(run)
        temporary = any(_is_temporary(part) for part in rel.parts)
        if path.is_file() and not temporary and rel.as_posix() not in (MANIFEST_NAME, _LOCK):
            files[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _copy_run(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    if src.exists():
        shutil.copytree(src, dst, symlinks=True)
    else:
        dst.mkdir(parents=True)


def summarize(chain: Chain, results: list[TrialResult], wall_s: float) -> dict[str, object]:
    return {
        "cpu": cpu_info().describe(),
        "python": platform.python_version(),
        "wall_s": round(wall_s, 1),
        "stage_seconds": {k: round(v, 2) for k, v in chain.durations.items()},
        "trials": len(results),
        "stages_covered": sorted({r.trial.stage for r in results}),
        "stopped_while_running": sum(r.stopped_while_running for r in results),
        "by_way": {how: sum(r.trial.how == how for r in results) for how in EXPECTED_WAYS},
        "files_checked": sum(r.files_checked for r in results),
        "temporaries_left_by_kills": sum(r.temporaries_left for r in results),
        "failures": [asdict(r) for r in results if r.problems],
        "nondeterministic": {k: {"files": v[0], "why": v[1]} for k, v in NONDETERMINISTIC.items()},
        "results": [asdict(r) for r in results],
    }


# Where a signal lands is the machine's timing, not what is tested: a trial whose stop came
# after the stage had finished (SIGINT at an engines build's first temporary file, once
# in a fresh-clone `make test` while every other run hit) is run again, up to this many
# times in all; only one that never lands is reported as missed.
_ATTEMPTS = 3


def _run_until_it_lands(chain: Chain, trial: Trial) -> TrialResult:
    for attempt in range(1, _ATTEMPTS + 1):
        result = run_trial(chain, trial)
        result.attempts = attempt
        if result.stopped_while_running or result.problems:
            break
    return result


def run_plan(plan: list[Trial], work: Path) -> dict[str, object]:
    start = time.perf_counter()
    chain = build_chain(work)
    results = []
    for trial in plan:
        results.append(_run_until_it_lands(chain, trial))
        if results[-1].problems:  # as they happen: a full plan runs for half an hour
            print(f"FAILED {trial.name}: {results[-1].problems}", file=sys.stderr, flush=True)
    return summarize(chain, results, time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=("quick", "full"), default="full")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    plan = full_plan() if args.plan == "full" else quick_plan()
    with tempfile.TemporaryDirectory(prefix="quantpipe-interrupt-") as tmp:
        summary = run_plan(plan, args.work or Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    failures = summary["failures"]
    print(
        f"{summary['trials']} trials on {len(summary['stages_covered'])} stages "  # type: ignore[arg-type]
        f"({summary['stopped_while_running']} stopped mid-run), {summary['files_checked']} files "
        f"checked, {len(failures)} failures; {summary['wall_s']} s on {summary['cpu']}"  # type: ignore[arg-type]
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
