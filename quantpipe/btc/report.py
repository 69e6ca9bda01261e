"""BTC results as text: the paper's Table 2 layout, candidates, and 8-bit block shares."""

from __future__ import annotations

from typing import Any

from quantpipe.text_table import format_table


def btc_table(results: dict[str, Any], model: str) -> str:
    """Table 2 of the paper (plus effective bits and the size ratio), candidates, layers."""
    s, acc, base = results["summary"], results["accuracy"], results["baselines"]
    uni = base["uniform8_per_tensor"]
    main = format_table(
        (
            "model",
            "FP32 acc",
            "BTC acc",
            "uniform acc",
            "BTC RMSE",
            "BTC payload bits",
            "BTC eff. bits",
            "uniform bits",
            "size ratio vs FP32 ONNX",
        ),
        [
            (
                model,
                f"{acc['fp32']['test']:.2f}",
                f"{acc['btc_test']:.2f}",
                f"{uni['test_accuracy']:.2f}",
                f"{s['rmse']:.2e}",
                f"{s['b_avg']:.3f}",
                f"{s['b_eff']:.3f}",
                f"{uni['bits']}",
                f"{results['size']['ratio']:.2f}×",
            )
        ],
    )
    data = acc["data_test"]
    lines = [
        main,
        f"Accuracies: top-1 % on {data['dataset']} split {data['split']}, "
        f"{data['count']:,} samples ({data['path']}). Policy: {s['policy']}.",
    ]
    if results["candidates"]:
        lines += ["", "Candidates (selected on val, reported on test):", candidates_table(results)]
    lines += ["", "Share of 8-bit blocks per layer:", layers_table(s["layers"])]
    return "\n".join(lines)


def candidates_table(results: dict[str, Any]) -> str:
    rows = [
        (
            c.get("block_size"),
            c.get("tau", c.get("target_bits")),
            f"{c['b_avg']:.3f}",
            f"{c['b_eff']:.3f}",
            f"{c['rmse']:.2e}",
            f"{c['val_accuracy']:.2f}",
            f"{c['val_drop']:+.2f}",
            f"{c['test_accuracy']:.2f}",
        )
        for c in results["candidates"]
    ]
    return format_table(
        ("B", "τ / budget", "payload bits", "eff. bits", "RMSE", "val acc", "val drop", "test acc"),
        rows,
    )


def layers_table(layers: list[dict[str, Any]]) -> str:
    rows = [
        (x["name"], f"{x['n']:,}", f"{100 * x['frac_high']:.1f} %", f"{x['b_eff']:.2f}")
        for x in layers
    ]
    return format_table(("layer", "weights", "8-bit blocks", "eff. bits"), rows)
