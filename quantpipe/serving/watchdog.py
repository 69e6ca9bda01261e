"""The serving watchdog: when `quantpipe serve` dies without stopping Triton (SIGKILL, the
OOM killer), it kills what that process started and removes what they left behind.

pytriton ties tritonserver to its parent only by PR_SET_PDEATHSIG = SIGTERM, which starts
a graceful drain; with the parent gone, the requests in flight can never be answered (the
models run in the parent), so tritonserver waits out its exit timeout and the Python
backend stubs theirs: measured, the tree lived ~20 s more, holding the ports (a restart
fails) while clients hung. And a killed tree removes nothing: pytriton's workspace (~22
MiB, a copy of tritonserver), the model directories tritonserver writes to /tmp/folder*,
the stubs' and tensor stores' shared memory in /dev/shm all stayed, at every kill.

`quantpipe serve` starts this before tritonserver, in its own session (a signal to the
server's process group does not reach it), holding the read end of a pipe whose write end
only the server holds. The kernel closes that end however the server ends, so end of file
here is the server's death. Meanwhile, whenever /dev/shm or /tmp's folder* change (looked
at every second), it notes what the server's tree holds (the server, tritonserver, the
stubs and their descendants): shared memory they map, model directories the stubs run
from; a tree killed whole at once can no longer be asked. At the server's death
it SIGKILLs that tree and removes the workspace and everything noted. After a clean stop
all of it is gone already, and this does nothing. Only the standard library: it must start
fast and never fail on an import.

    python -m quantpipe.serving.watchdog WORKSPACE SHM_PREFIX   (stdin: the lifeline)
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import sys
import tempfile
from pathlib import Path

SHM = Path("/dev/shm")
_PSM = re.compile(r" (/dev/shm/psm_\w+)$", re.MULTILINE)  # a mapping's path, last on its line
SNAPSHOT_S = 1.0  # how often /dev/shm and /tmp are looked at (what is newer may be missed)


def main(argv: list[str]) -> int:
    workspace, shm_prefix = argv
    server = os.getppid()  # a valid pid only while the lifeline is open
    noted: set[Path] = set()
    listed: set[str] = set()
    lifeline = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([lifeline], [], [], SNAPSHOT_S)
        if readable and not os.read(lifeline, 4096):  # the server never writes: its death
            break
        now = _listing()
        if now != listed:  # reading every process's maps costs ~20 ms: only on a change
            listed = now
            noted |= held_files(tree([server]))  # the whole tree, while the server lives
    clean_up(workspace, shm_prefix, noted)
    return 0


def clean_up(workspace: str, shm_prefix: str, noted: set[Path] | None = None) -> None:
    """SIGKILL the tree of what names `workspace`, then remove the workspace, the regions
    named `shm_prefix`*, and the files the tree holds or held (`noted`). Safe to call when
    all of it is already gone."""
    pids = tree(started_from(workspace))
    noted = (noted or set()) | held_files(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(workspace, ignore_errors=True)
    leftovers = list(noted) + (list(SHM.glob(shm_prefix + "*")) if shm_prefix else [])
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def started_from(workspace: str) -> list[int]:
    """Processes whose command line names a file in `workspace`: tritonserver runs from its
    copy there and the stubs from its backends/ directory; a recycled pid never matches.
    With the slash: the workspace of pid 12 is a prefix of pid 123's."""
    needle = os.path.join(workspace, "").encode()
    me = os.getpid()
    return [pid for pid, argv in _cmdlines().items() if needle in argv and pid != me]


def tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants, found now (before anything is killed: a killed
    parent's children are re-parented and leave its tree)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def held_files(pids: list[int]) -> set[Path]:
    """What `pids` would leave behind: the psm_* segments in /dev/shm they map (pytriton's
    tensor stores, made with multiprocessing.shared_memory; nothing else mapped there is
    taken: it may be shared beyond this tree) and the /tmp/folder* model directories
    tritonserver wrote for the stubs (a stub's first argument is FOLDER/1/model.py)."""
    found: set[Path] = set()
    tmp = Path(tempfile.gettempdir())
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        found.update(Path(path) for path in _PSM.findall(maps))
        if len(argv) > 1 and argv[1].endswith(b"/1/model.py"):
            folder = Path(os.fsdecode(argv[1])).parent.parent
            if folder.parent == tmp and folder.name.startswith("folder"):
                found.add(folder)
    return found


def _listing() -> set[str]:
    """What could be the tree's leftovers now: /dev/shm's entries and /tmp's folder*."""
    tmp = tempfile.gettempdir()
    return set(os.listdir(SHM)) | {f"{tmp}/{n}" for n in os.listdir(tmp) if n.startswith("folder")}


def parents() -> dict[int, int]:
    """Every live process's parent, from /proc/PID/stat (the fields after the command name,
    which may itself hold spaces and parentheses); zombies are dead and left out."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:  # exited meanwhile
                continue
            state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
            if state != b"Z":
                out[int(entry.name)] = int(ppid)
    return out


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
