"""Progress of a sweep's jobs: one plain line per event, so a log file reads as well as a
terminal, with the counts of jobs done, running and failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from dsg.jobs import Job, JobResult


class JobProgress:
    """Counts jobs as they start and end and prints a line for each."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.running = 0
        self.done = 0
        self.failed: list[JobResult] = []

    def _line(self, name: str, what: str) -> None:
        counts = (
            f"[{self.done}/{self.total} done, {self.running} running, {len(self.failed)} failed]"
        )
        self.console.print(f"{counts} {name}: {what}", highlight=False, markup=False)

    def started(self, job: Job) -> None:
        self.running += 1
        self._line(job.name, f"started -> {job.out}")

    def ended(self, result: JobResult, *, was_running: bool = True) -> None:
        self.running -= int(was_running)
        if result.ok:
            self.done += 1
            self._line(result.name, "finished earlier, skipped" if result.skipped else "done")
        else:
            self.failed.append(result)
            self._line(result.name, f"FAILED: {result.error}")
