"""Progress bars: live on a terminal, one line per finished bar when output is redirected.

tqdm redraws with carriage returns; in a CI log or `make demo > log` that is hundreds of
updates glued into one line. When standard error is not a terminal, a bar prints a single
line when it closes (what ran, how many items, how long), so a stage writes a few lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> None: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _OneLine:
    """Counts quietly; on close prints `desc: N unit in S s`."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.count = desc, unit, 0
        self.start = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.count += n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            elapsed = time.perf_counter() - self.start
            print(f"{self.desc}: {self.count:,} {self.unit} in {elapsed:.1f} s", file=sys.stderr)


class ProgressBar:
    """A context manager around the right kind of bar for where output goes."""

    def __init__(self, desc: str, total: int | None, enabled: bool, unit: str = "it") -> None:
        self.bar: Progress
        if not enabled:
            self.bar = _Silent()
        elif sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
        else:
            self.bar = _OneLine(desc, unit)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A failed or interrupted loop prints no "done" line for work it did not finish.
        if et is None:
            self.close()


def track(
    items: Iterable[T], desc: str, enabled: bool, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate `items` with a progress bar (`total` defaults to len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(desc, total, enabled, unit) as bar:
        for item in items:
            yield item
            bar.update()
