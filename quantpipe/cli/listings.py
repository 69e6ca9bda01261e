"""`quantpipe models`, `datasets` and `backends`: what the registries hold."""

from __future__ import annotations

import argparse

from quantpipe.text_table import format_table


def cmd_models(_: argparse.Namespace) -> int:
    from quantpipe.models.registry import MODELS, summarize  # counting parameters needs torch

    rows = []
    for spec in MODELS.values():
        s = summarize(spec)
        shape = "×".join(map(str, s.input_shape))
        rows.append((s.name, shape, f"{s.parameters:,}", s.task, s.weights))
    print(format_table(("model", "input", "parameters", "task", "weights"), rows))
    print(
        "\nAny other model: --model path/to/file.py:factory [--input-shape C,H,W] [--weights FILE]"
    )
    return 0


def cmd_datasets(_: argparse.Namespace) -> int:
    from quantpipe.data.registry import DATASETS

    rows = [
        (
            k.name,
            k.description,
            str(k.default_path or ("(path required)" if k.needs_path else "built-in")),
        )
        for k in DATASETS.values()
    ]
    print(format_table(("data set", "what", "default path"), rows))
    print("\nUse --data NAME[:PATH]. Splits: train, calib, val, test, all (see README).")
    return 0


def cmd_backends(_: argparse.Namespace) -> int:
    from quantpipe.engines.probe import probe_isolated
    from quantpipe.engines.registry import all_backends

    backends = all_backends()
    rows = [
        (b.name, b.description, "yes" if a.available else "no", a.detail)
        for b, a in zip(backends, probe_isolated(backends), strict=True)
    ]
    print(format_table(("backend", "what", "available", "here (or why not)"), rows))
    return 0
