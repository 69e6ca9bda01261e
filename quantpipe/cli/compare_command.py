"""`quantpipe compare REF CAND`: per-output and per-layer error between two ONNX models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from quantpipe.data.selection import select
from quantpipe.export.metadata import require_contract
from quantpipe.export.onnx_file import load_onnx
from quantpipe.stages.common import DataRef
from quantpipe.text_table import format_table


def cmd_compare(args: argparse.Namespace) -> int:
    from quantpipe.quantize import compare_models

    data = DataRef(args.data, args.seed)
    ref, cand = Path(args.reference), Path(args.candidate)
    pre = require_contract(ref).preprocessing
    sel = select(data.open(), args.split, pre, data.seed, args.count)
    input_name = load_onnx(ref, load_external_data=False).graph.input[0].name
    feeds = ({input_name: x} for x, _ in sel.batches(32))
    result = compare_models(ref, cand, feeds, threads=args.threads)
    headers = ("tensor", "node", "op", "max |Δ|", "cosine", "SQNR dB")
    print("Outputs:")
    print(format_table(headers, [_row(r) for r in result.outputs]))
    print(f"\nLayers, worst first ({min(args.top, len(result.layers))} of {len(result.layers)}):")
    print(format_table(headers, [_row(r) for r in result.layers[: args.top]]))
    print(f"\nOn {len(sel):,} samples of {data.spec} split {args.split}.")
    return 0


def _row(r: Any) -> tuple[str, ...]:
    return (r.tensor, r.node, r.op_type, f"{r.max_abs:.3g}", f"{r.cosine:.5f}", f"{r.sqnr_db:.1f}")
