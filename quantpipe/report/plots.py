"""The report's figures: accuracy versus shipped size, latency per sample versus batch size,
and BTC's share of 8-bit blocks per layer. PNG at dpi 110, like the BTC figures.

matplotlib is imported inside each function (with the Agg backend: files only, never a
window), so importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from quantpipe.report.tables import Row

DPI = 110
_MARKERS = "osD^v<>"


class Layer(Protocol):
    """One BTC-coded tensor: its name, share of 8-bit blocks and effective bits."""

    @property
    def name(self) -> str: ...
    @property
    def frac_high(self) -> float: ...
    @property
    def b_eff(self) -> float: ...


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    # The path is the stage's temporary file (suffix .tmp): name the format explicitly.
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)
    _pyplot().close(fig)


def _label(row: Row, rows: Sequence[Row]) -> str:
    """The variant, with its backend when the report has several."""
    several = len({r.backend for r in rows}) > 1
    return f"{row.variant} ({row.backend})" if several and not row.reference else row.variant


def _series(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Engines by backend, then the baselines: one colour and legend entry each."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault("ORT baselines" if r.baseline else r.backend, []).append(r)
    return groups


def accuracy_vs_size(rows: Sequence[Row], accuracy_label: str, path: Path) -> None:
    """One labelled point per engine: shipped size (KiB, log) against accuracy.

    Args:
        accuracy_label: the y axis, naming the metric, data set and sample count.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=DPI)
    groups = _series(rows)
    for i, (name, members) in enumerate(groups.items()):
        xs = [r.shipped_bytes / 1024 for r in members]
        ax.scatter(xs, [r.accuracy_pct for r in members], s=40, marker=_MARKERS[i % 7], label=name)
    ax.set_xscale("log")
    sizes = [r.shipped_bytes / 1024 for r in rows]
    ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)  # room for the outermost labels
    _pad_y(ax, [r.accuracy_pct for r in rows])
    _plain_log_ticks(ax.xaxis, *ax.get_xlim())
    ax.set_xlabel("shipped size (KiB, log scale)")
    ax.set_ylabel(accuracy_label)
    ax.set_title("Accuracy versus shipped size")
    ax.grid(True, which="both", alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()  # before the labels are placed: placement works in pixels
    _label_points(fig, ax, _spots(rows))
    _save(fig, path)


def _pad_y(ax: Any, values: Sequence[float]) -> None:
    """Room above and below the points for their labels (at least ±0.5 points)."""
    lo, hi = min(values), max(values)
    pad = max(0.5, 0.2 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)


def _spots(rows: Sequence[Row]) -> list[tuple[float, float, str]]:
    """Points with their labels; engines that coincide (within 2 % in size, same accuracy
    to 0.01 points) share one point and one label, a line each."""
    spots: dict[tuple[float, float], tuple[float, float, list[str]]] = {}
    for r in rows:
        x, y = r.shipped_bytes / 1024, r.accuracy_pct
        key = (round(math.log10(x) / 0.0086), round(y, 2))  # 0.0086 decades = 2 %
        spots.setdefault(key, (x, y, []))[2].append(_label(r, rows))
    return [(x, y, "\n".join(labels)) for x, y, labels in spots.values()]


# Where a point's label may go, in order of preference: (dx, dy) in points, alignment.
# Labels away from their point get a leader line.
_OFFSETS = (
    (0, 7, "center", "bottom"), (0, -7, "center", "top"), (7, 0, "left", "center"),
    (-7, 0, "right", "center"), (0, 22, "center", "bottom"), (0, -22, "center", "top"),
    (25, 18, "left", "bottom"), (-25, 18, "right", "bottom"), (25, -18, "left", "top"),
    (-25, -18, "right", "top"), (0, 40, "center", "bottom"), (0, -40, "center", "top"),
)  # fmt: skip
_LEADER = {"arrowstyle": "-", "color": "0.45", "lw": 0.6}


def _label_points(fig: Any, ax: Any, spots: Sequence[tuple[float, float, str]]) -> None:
    """Label each point at the first place of `_OFFSETS` where its text stays inside the
    axes and overlaps no marker and no label placed before it (else at the first place)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [_marker_box(ax, x, y) for x, y, _ in spots]
    tries = (*_OFFSETS, _OFFSETS[0])  # the last try is kept, free or not
    for x, y, text in sorted(spots, key=lambda s: (s[0], s[1])):
        for i, (dx, dy, ha, va) in enumerate(tries):
            leader = _LEADER if abs(dx) + abs(dy) > 10 else None
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              ha=ha, va=va, fontsize=8, arrowprops=leader)  # fmt: skip
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader
            free = _inside(box, frame) and not any(box.overlaps(t) for t in taken)
            if free or i == len(tries) - 1:
                break
            ann.remove()
        taken.append(box)


def _inside(box: Any, frame: Any) -> bool:
    return bool(
        frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    )


def _marker_box(ax: Any, x: float, y: float) -> Any:
    from matplotlib.transforms import Bbox

    px, py = ax.transData.transform((x, y))
    r = 4 * ax.figure.dpi / 72  # a marker of size 40 (points²) has a radius near 3.2 points
    return Bbox.from_extents(px - r, py - r, px + r, py + r)


# Leading digits of the minor ticks labelled on a log axis, by the decades it spans.
_MINOR_LABELS = ((0.6, set(range(2, 10))), (1.5, {2, 3, 5}), (2.5, {2, 5}))


def _plain_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Plain numbers on a log axis (20, 30 rather than 2×10¹); minor ticks labelled only
    where they do not crowd: every one within half a decade, fewer as the span grows."""
    from matplotlib.ticker import FuncFormatter

    span = math.log10(hi / lo)
    leads = next((d for limit, d in _MINOR_LABELS if span < limit), set())
    axis.set_major_formatter(FuncFormatter(lambda v, _: _plain(v)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: _plain(v) if _lead(v) in leads else ""))


def _plain(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _lead(v: float) -> int:
    """The leading digit: 0.03 → 3, 700 → 7."""
    return round(v / 10 ** math.floor(math.log10(v) + 1e-9))


def latency_vs_batch(rows: Sequence[Row], path: Path) -> None:
    """One line per engine: p50 latency per sample (ms, log) against batch size (log2);
    the legend sits outside the axes, so that no line hides behind it."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=DPI)
    sizes: set[int] = set()
    for i, r in enumerate(rows):
        per_sample = r.latency_per_sample()
        sizes |= set(per_sample)
        style = "--" if r.reference else "-"  # references dashed, the run's engines solid
        ax.plot(list(per_sample), list(per_sample.values()), style, marker=_MARKERS[i % 7],
                label=_label(r, rows))  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(sizes)))  # the batch sizes timed
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    _plain_log_ticks(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel("batch size (log2 scale)")
    ax.set_ylabel("p50 latency per sample (ms, log scale)")
    ax.set_title("Latency per sample versus batch size")
    ax.grid(True, which="both", alpha=0.3)
    if len(rows) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def btc_layers(layers: Sequence[Layer], b_eff: float, frac_high: float, path: Path) -> None:
    """Horizontal bars: the share of 8-bit blocks per coded layer (first layer on top),
    each labelled with its share and effective bits; the whole model's in the title."""
    plt = _pyplot()
    height = max(2.4, 0.3 * len(layers) + 1.3)  # a readable bar per layer, however many
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=DPI)
    y = list(range(len(layers)))
    shares = [100 * x.frac_high for x in layers]
    ax.barh(y, shares, color="#3465a4")
    for yi, share, x in zip(y, shares, layers, strict=True):
        ax.annotate(f"{share:.1f} %, {x.b_eff:.2f} bits", (share, yi), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y, [x.name for x in layers], fontsize=8)
    ax.set_ylim(len(layers) - 0.5, -0.5)  # first layer on top, no empty margin
    ax.set_xlim(0, 130)  # room for the label of a 100 % bar
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("8-bit blocks (% of the layer's blocks); label: share, effective bits")
    ax.set_title(
        f"BTC: 8-bit blocks per layer (whole model: {100 * frac_high:.1f} %, "
        f"{b_eff:.2f} effective bits per weight)", fontsize=10,
    )  # fmt: skip
    _save(fig, path)
