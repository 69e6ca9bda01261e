"""The btc stage's modes, one frozen config each, found by name in `BTC_MODES`.

- sigma-rule: the paper's rule, one block size and τ (the default).
- paper-search: the paper's B × τ search; fewest bits within an accuracy drop and RMSE.
- target-bits: a budget in effective bits; Fisher-weighted allocation, least error wins.
- max-drop: fewest effective bits (a ladder of budgets) within an accuracy drop on val.

A mode says which policies to try (`policies`) and how to pick among them (`choose`); the
coder (btc_coder.py) does the work. A new mode is one class here plus one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from quantpipe.btc.clipsearch import DEFAULT_CLIP_GRID
from quantpipe.btc.encoded import HEADER_BITS_PER_BLOCK as HEADER_BITS
from quantpipe.btc.policy import Policy, SigmaRule, TargetBits
from quantpipe.errors import QuantpipeError

if TYPE_CHECKING:
    from quantpipe.data.selection import Selection
    from quantpipe.stages.btc_coder import Coded, Coder

PAPER_MAX_DROP = 2.0  # points: the paper's selection bound, when --max-drop is not given
# Effective-bit budgets tried by --max-drop, smallest first (4-bit payload plus headers
# is the floor; all-8-bit with B = 64 is 8.52).
BUDGET_LADDER = (4.25, 4.5, 4.75, 5.0, 5.5, 6.0, 7.0, 8.0)
BLOCK_SIZES = (32, 64, 128, 256)


class BtcMode(Protocol):
    name: ClassVar[str]
    # Affine re-tuning steps unless --retune-steps says otherwise: the paper's modes stay
    # exactly as published (0); the budgeted modes re-tune (300).
    default_retune_steps: ClassVar[int]
    # The 8-bit baselines unless --baselines/--no-baselines says otherwise: the paper's
    # modes reproduce its table, which compares with them; the budgeted modes do not need
    # them to choose (two more passes over the test split).
    default_baselines: ClassVar[bool]

    def policies(self) -> list[Policy]: ...

    def choose(
        self, coder: Coder, fp32_val: Callable[[], float], val: Selection
    ) -> tuple[Coded, list[Coded]]:
        """The chosen candidate and every candidate scored on `val` (empty if none was).
        `fp32_val` measures the FP32 model on `val` (once): only modes that select on val
        call it."""
        ...


def _check_drop(max_drop: float) -> None:
    if max_drop < 0:
        raise QuantpipeError(f"--max-drop must be ≥ 0 points, got {max_drop}")


@dataclass(frozen=True)
class SigmaRuleMode:
    name: ClassVar[str] = "sigma-rule"
    default_retune_steps: ClassVar[int] = 0
    default_baselines: ClassVar[bool] = True
    block_size: int = 64
    tau: float = 0.05
    low_bits: int = 4
    high_bits: int = 8

    def __post_init__(self) -> None:
        self.policies()  # the policy validates its values

    def policies(self) -> list[Policy]:
        return [SigmaRule(self.tau, self.block_size, self.low_bits, self.high_bits)]

    def choose(
        self, coder: Coder, fp32_val: Callable[[], float], val: Selection
    ) -> tuple[Coded, list[Coded]]:
        return coder.code(self.policies()[0]), []


@dataclass(frozen=True)
class PaperSearchMode:
    name: ClassVar[str] = "paper-search"
    default_retune_steps: ClassVar[int] = 0
    default_baselines: ClassVar[bool] = True
    block_sizes: tuple[int, ...] = BLOCK_SIZES
    taus: tuple[float, ...] = (0.05,)
    max_rmse: float = 3e-3
    max_drop: float = PAPER_MAX_DROP
    low_bits: int = 4
    high_bits: int = 8

    def __post_init__(self) -> None:
        _check_drop(self.max_drop)
        self.policies()

    def policies(self) -> list[Policy]:
        lo, hi = self.low_bits, self.high_bits
        return [SigmaRule(t, b, lo, hi) for b in self.block_sizes for t in self.taus]

    def choose(
        self, coder: Coder, fp32_val: Callable[[], float], val: Selection
    ) -> tuple[Coded, list[Coded]]:
        from quantpipe.stages.btc_coder import search

        policies = self.policies()
        return search(coder, policies, fp32_val(), val, self.max_drop, self.max_rmse, False)


@dataclass(frozen=True)
class TargetBitsMode:
    name: ClassVar[str] = "target-bits"
    default_retune_steps: ClassVar[int] = 300
    default_baselines: ClassVar[bool] = False
    target_bits: float
    block_sizes: tuple[int, ...] = BLOCK_SIZES
    low_bits: int = 4
    high_bits: int = 8

    def __post_init__(self) -> None:
        if not self.policies():
            raise QuantpipeError(
                f"--target-bits {self.target_bits} is below {self.low_bits} payload bits plus the "
                f"block headers for every block size in {self.block_sizes}: raise it"
            )

    def policies(self) -> list[Policy]:
        """Every block size whose header floor admits the budget."""
        lo, hi = self.low_bits, self.high_bits
        return [
            TargetBits(self.target_bits, b, lo, hi, DEFAULT_CLIP_GRID)
            for b in self.block_sizes
            if self.target_bits >= lo + HEADER_BITS / b
        ]

    def choose(
        self, coder: Coder, fp32_val: Callable[[], float], val: Selection
    ) -> tuple[Coded, list[Coded]]:
        # The least Fisher-weighted error wins (no accuracy is measured for this choice);
        # re-tuning is the slow part, so only that block size gets it.
        encodings = [(p, coder.encode(p)) for p in self.policies()]
        policy, encoding = min(encodings, key=lambda pe: pe[1].summary.wsse or 0.0)
        return coder.code(policy, encoding), []


@dataclass(frozen=True)
class MaxDropMode:
    name: ClassVar[str] = "max-drop"
    default_retune_steps: ClassVar[int] = 300
    default_baselines: ClassVar[bool] = False
    max_drop: float
    block_size: int = 64
    low_bits: int = 4
    high_bits: int = 8

    def __post_init__(self) -> None:
        _check_drop(self.max_drop)
        self.policies()

    def policies(self) -> list[Policy]:
        """The budget ladder from the smallest budget this block size admits."""
        lo, hi, b = self.low_bits, self.high_bits, self.block_size
        floor = lo + HEADER_BITS / b
        return [TargetBits(x, b, lo, hi, DEFAULT_CLIP_GRID) for x in BUDGET_LADDER if x >= floor]

    def choose(
        self, coder: Coder, fp32_val: Callable[[], float], val: Selection
    ) -> tuple[Coded, list[Coded]]:
        from quantpipe.stages.btc_coder import search

        # The ladder is ascending: its first admissible rung is the answer.
        return search(coder, self.policies(), fp32_val(), val, self.max_drop, None, True)


BTC_MODES: dict[str, type[BtcMode]] = {
    m.name: m for m in (SigmaRuleMode, PaperSearchMode, TargetBitsMode, MaxDropMode)
}


def mode_params(mode: BtcMode) -> dict[str, Any]:
    """The mode's name and values, for the manifest."""
    return {"mode": mode.name, **asdict(mode)}  # type: ignore[call-overload]


def mode_from_flags(
    *,
    block_size: int = 64,
    tau: float = 0.05,
    low_bits: int = 4,
    high_bits: int = 8,
    target_bits: float | None = None,
    max_drop: float | None = None,
    search: bool = False,
    max_rmse: float = 3e-3,
    block_sizes: tuple[int, ...] = BLOCK_SIZES,
    taus: tuple[float, ...] = (0.05,),
) -> BtcMode:
    """The mode that the CLI flags (or a run config's [btc] keys) select."""
    bits = {"low_bits": low_bits, "high_bits": high_bits}
    if target_bits is not None and (search or max_drop is not None):
        raise QuantpipeError("--target-bits fixes the budget: drop --search/--max-drop")
    if search:
        drop = PAPER_MAX_DROP if max_drop is None else max_drop
        return PaperSearchMode(block_sizes, taus, max_rmse, drop, **bits)
    if target_bits is not None:
        return TargetBitsMode(target_bits, block_sizes, **bits)
    if max_drop is not None:
        return MaxDropMode(max_drop, block_size, **bits)
    return SigmaRuleMode(block_size, tau, **bits)


def mode_by_name(name: str, values: dict[str, Any]) -> BtcMode:
    """A mode from its registry name and its own fields (a run config's `mode = "..."`)."""
    if name not in BTC_MODES:
        raise QuantpipeError(f"unknown BTC mode {name!r}: use one of {', '.join(BTC_MODES)}")
    try:
        return BTC_MODES[name](**values)
    except TypeError as e:
        raise QuantpipeError(f"BTC mode {name}: {e}") from None
