"""Progress that reads well on a terminal and in a log file.

Stages (:class:`Tracker`): on a terminal each counting stage shows a live rich bar. Elsewhere (a
file, a cluster job's log) a live bar prints nothing useful, so each stage writes plain lines
instead: one when it starts, one every ``interval`` seconds with the rows done and the rate, and
one when it ends with its wall time. Either way every stage's wall time is kept for the report
and printed once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

Advance = Callable[[int], None]
"""Called with the number of rows a stage has just finished."""

PLAIN_INTERVAL = 30.0
"""Seconds between two progress lines of a stage in a log file."""


class Tracker:
    """Wall time per stage, and live progress of the stages that count rows."""

    def __init__(self, console: Console, interval: float = PLAIN_INTERVAL) -> None:
        self.console = console
        self.interval = interval
        self.seconds: dict[str, float] = {}

    @property
    def plain(self) -> bool:
        return not self.console.is_terminal

    def _line(self, text: str) -> None:
        self.console.print(f"[dsg] {text}", highlight=False, markup=False, soft_wrap=True)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time a stage that shows no count (it may run counting stages of its own)."""
        start = time.perf_counter()
        if self.plain:
            self._line(f"{name}: started")
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        if self.plain:
            self._line(f"{name}: done in {elapsed:.1f} s")

    @contextmanager
    def counting(
        self, name: str, total: int | None = None, unit: str = "rows"
    ) -> Iterator[Advance]:
        """Time a stage and show its rows done: a bar on a terminal, lines elsewhere."""
        start = time.perf_counter()
        done = 0
        if self.plain:
            of = f" of {total}" if total is not None else ""
            self._line(f"{name}: started" + (f" ({total} {unit})" if total is not None else ""))
            last_line = start

            def advance(n: int) -> None:
                nonlocal done, last_line
                done += n
                now = time.perf_counter()
                if now - last_line >= self.interval:
                    last_line = now
                    self._line(f"{name}: {done}{of} {unit}, {done / (now - start):.1f} {unit}/s")

            try:
                yield advance
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            rate = done / elapsed if elapsed > 0 else 0.0
            self._line(f"{name}: done in {elapsed:.1f} s ({done} {unit}, {rate:.1f} {unit}/s)")
            return
        yield from self._bar(name, total, unit, start)

    def _bar(self, name: str, total: int | None, unit: str, start: float) -> Iterator[Advance]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (SpinnerColumn(), TextColumn(name), BarColumn(), MofNCompleteColumn())
        bar = Progress(
            *columns, TextColumn(unit), TimeElapsedColumn(), console=self.console, transient=True
        )
        try:
            with bar:
                task = bar.add_task(name, total=total)
                yield lambda n: bar.advance(task, n)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> None:
        """Every stage's wall time on one line."""
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())
        self._line(f"wall time: {parts}")
