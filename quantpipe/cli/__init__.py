"""The `quantpipe` command: parse, dispatch, and turn user errors into one line + exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from quantpipe.cli import commands, quantize_commands
from quantpipe.cli.parser import build_parser
from quantpipe.errors import QuantpipeError

EXIT_INTERRUPTED = 130


def _handlers() -> dict[str, Callable[..., int]]:
    from quantpipe.cli.run_command import cmd_run

    return {
        "models": commands.cmd_models,
        "datasets": commands.cmd_datasets,
        "backends": commands.cmd_backends,
        "train": commands.cmd_train,
        "export": commands.cmd_export,
        "eval": commands.cmd_eval,
        "btc": commands.cmd_btc,
        "calibrate": quantize_commands.cmd_calibrate,
        "ptq": quantize_commands.cmd_ptq,
        "compare": quantize_commands.cmd_compare,
        "run": cmd_run,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _handlers()[args.command](args)
    except QuantpipeError as e:
        print(f"quantpipe {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # Stages only rename finished outputs into place, so nothing partial is left.
        print(
            f"quantpipe {args.command}: interrupted; no partial artifact was kept", file=sys.stderr
        )
        return EXIT_INTERRUPTED


def _one_line(message: str) -> str:
    return " ".join(message.split())
