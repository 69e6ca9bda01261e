"""The `quantpipe` command: parse, import the one handler the command needs, and turn user
errors into one line + exit 2.

Handlers are named as "module:function" and imported only when their command runs, so
`quantpipe --help`, `datasets` and `backends` never import torch or onnxruntime, and a
host that only serves ONNX models needs no torch at all.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from quantpipe.cli.parser import build_parser
from quantpipe.errors import QuantpipeError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
# Write failures that mean "no room" (a full disk, a file-size limit, a quota), not a bug.
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
COMMANDS = {
    "models": "quantpipe.cli.listings:cmd_models",
    "datasets": "quantpipe.cli.listings:cmd_datasets",
    "backends": "quantpipe.cli.listings:cmd_backends",
    "train": "quantpipe.cli.stage_commands:cmd_train",
    "export": "quantpipe.cli.stage_commands:cmd_export",
    "eval": "quantpipe.cli.stage_commands:cmd_eval",
    "btc": "quantpipe.cli.stage_commands:cmd_btc",
    "calibrate": "quantpipe.cli.stage_commands:cmd_calibrate",
    "ptq": "quantpipe.cli.stage_commands:cmd_ptq",
    "qat": "quantpipe.cli.qat_command:cmd_qat",
    "mixed": "quantpipe.cli.stage_commands:cmd_mixed",
    "engines": "quantpipe.cli.stage_commands:cmd_engines",
    "bench": "quantpipe.cli.stage_commands:cmd_bench",
    "report": "quantpipe.cli.stage_commands:cmd_report",
    "triton": "quantpipe.cli.triton_command:cmd_triton",
    "serve": "quantpipe.cli.serve_command:cmd_serve",
    "compare": "quantpipe.cli.compare_command:cmd_compare",
    "inspect": "quantpipe.cli.inspect_command:cmd_inspect",
    "run": "quantpipe.cli.run_command:cmd_run",
    "zoo": "quantpipe.cli.zoo_command:cmd_zoo",
}
# Libraries a command may need that a slim (e.g. serving-only) install can lack.
_OPTIONAL_STACK = (
    "torch", "torchvision", "matplotlib", "onnxruntime", "onnxslim", "sklearn", "tritonclient",
)  # fmt: skip


def program() -> int:
    """`main` as the `quantpipe` program (the console script and `python -m quantpipe`).

    Once the command has its exit status, Ctrl-C and SIGTERM are ignored while the
    interpreter exits: Python gives both back their default action as it shuts down, so a
    signal arriving then killed a command that had finished (the interruption harness saw
    exit -2 with every output committed). Not in `main`, which tests call in-process."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if code == EXIT_INTERRUPTED and sys.implementation.name == "cpython":
        # CPython notes a KeyboardInterrupt that leaves code run through PyRun_* (as some
        # extension modules run Python code) as unhandled, even when we catch it later;
        # under `python -m` it then kills itself with SIGINT at exit (returncode -2, not
        # 130: seen by the interruption harness). Running an empty statement the same way
        # clears that note.
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    # The handler goes in before anything else, so a SIGTERM that arrives while the command
    # starts up also ends in one line and exit 143.
    with _terminate_as_interrupt():
        args = build_parser().parse_args(argv)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return _handler(args.command)(args)
    except QuantpipeError as e:
        return _fail(args.command, str(e), e.exit_code)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _OPTIONAL_STACK:
            raise
        return _fail(
            args.command,
            f"this command needs {e.name}, which is not installed here: pip install quantpipe "
            "with its dependencies (the README's set-up), or use a command that does not",
            QuantpipeError.exit_code,
        )
    except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # The host's files, not a bug: which file, why, and what to do, in one line.
        return _fail(
            args.command,
            f"{e.filename}: {e.strerror}; check the path and that this user may read and "
            "write there",
            QuantpipeError.exit_code,
        )
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        return _fail(
            args.command,
            f"cannot write {e.filename or 'an output'}: {e.strerror}; free disk space (or raise "
            "the file-size limit) and rerun: earlier outputs are intact and nothing partial was "
            "kept",
            QuantpipeError.exit_code,
        )
    except _Terminated:
        return _stopped(args.command, "terminated", EXIT_TERMINATED)
    except KeyboardInterrupt:
        return _stopped(args.command, "interrupted", EXIT_INTERRUPTED)
    except ImportError as e:
        # A signal while an extension module initialises reaches us as its ImportError
        # ("initialization failed", from pybind11) with the signal's exception as cause.
        stop = _stopping_cause(e)
        if stop is None:
            raise
        if isinstance(stop, _Terminated):
            return _stopped(args.command, "terminated", EXIT_TERMINATED)
        return _stopped(args.command, "interrupted", EXIT_INTERRUPTED)


def _stopping_cause(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or SIGTERM's `_Terminated` an exception was raised from."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (KeyboardInterrupt, _Terminated)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _stopped(command: str, how: str, code: int) -> int:
    # Stages only rename finished outputs into place, so nothing partial is left.
    print(f"quantpipe {command}: {how}; no partial artifact was kept", file=sys.stderr)
    return code


class _Terminated(BaseException):
    """SIGTERM (`kill`, a container stop): unwinds like Ctrl-C, so temporary files go."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into `_Terminated` while a command runs. Python's default for SIGTERM is
    to die at once, leaving temporary files behind; a command that installs its own handler
    (`serve`) replaces this one while it runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _handler(command: str) -> Callable[..., int]:
    module, _, function = COMMANDS[command].partition(":")
    handler: Callable[..., int] = getattr(importlib.import_module(module), function)
    return handler


def _fail(command: str, message: str, code: int) -> int:
    print(f"quantpipe {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return code
