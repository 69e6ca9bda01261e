"""The `quantpipe` command: parse, import the one handler the command needs, and turn user
errors into one line + exit 2.

Handlers are named as "module:function" and imported only when their command runs, so
`quantpipe --help`, `datasets` and `backends` never import torch or onnxruntime, and a
host that only serves ONNX models needs no torch at all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from quantpipe.cli.parser import build_parser
from quantpipe.errors import QuantpipeError

EXIT_INTERRUPTED = 130
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    except KeyboardInterrupt:
        # Stages only rename finished outputs into place, so nothing partial is left.
        print(
            f"quantpipe {args.command}: interrupted; no partial artifact was kept", file=sys.stderr
        )
        return EXIT_INTERRUPTED


def _handler(command: str) -> Callable[..., int]:
    module, _, function = COMMANDS[command].partition(":")
    handler: Callable[..., int] = getattr(importlib.import_module(module), function)
    return handler


def _fail(command: str, message: str, code: int) -> int:
    print(f"quantpipe {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return code
