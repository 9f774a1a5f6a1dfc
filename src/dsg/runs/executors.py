"""Where a sweep's jobs run: ``local`` (one after another in this process, sharing the loaded
model) or ``ray`` (one Ray task per job, one GPU each when the device is CUDA).

Either way a finished job (its ``job.json`` matches) is skipped, a failed job is reported and
the others go on, and evaluate's SAE-independent work is done once in ``{out}/shared``.
:class:`JobProgress` prints one plain line per event, with the counts of jobs done, running and
failed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError
from dsg.runs.jobs import (
    Job,
    JobResult,
    execute,
    finished,
    one_line,
    prepare_in_worker,
    run_in_worker,
)
from dsg.runs.ray_connect import connect, import_ray

if TYPE_CHECKING:
    from rich.console import Console

    from dsg.runs.sae_sweep import Plan

RAY_RETRIES = 2
"""Times Ray reruns a job whose worker died (kill -9, node loss) before it reports it failed."""


def run_jobs(plan: Plan, *, ray_retries: int = RAY_RETRIES) -> list[JobResult]:
    """Run the plan's jobs on the executor its settings name; results in job order."""
    s = plan.session.settings
    if s.executor == "ray":  # before any output: a missing Ray or a bad device is a user error
        import_ray()
        resources(s.device)
    progress = JobProgress(plan.session.console, len(plan.jobs))
    results: dict[int, JobResult] = {}
    todo: list[tuple[int, Job]] = []
    for index, job in enumerate(plan.jobs):
        done = None if s.force else finished(job)
        if done is None:
            todo.append((index, job))
        else:
            results[index] = done
            progress.ended(done, was_running=False)
    if s.executor == "ray":
        results |= run_on_ray(plan, todo, progress, ray_retries)
    else:
        shared_ready = False  # under --force, the first evaluate recomputes the shared work
        for index, job in todo:
            progress.started(job)
            session = plan.session
            if job.spec is not None:
                session = session.for_sae(job.spec, job.out, job.shared_out, shared_ready)
            results[index] = execute(job, session)
            shared_ready |= results[index].ok and job.stage == "evaluate"
            progress.ended(results[index])
    return [results[i] for i in range(len(plan.jobs))]


def resources(device: str) -> dict[str, float]:
    """One GPU per job on CUDA (Ray hands each task its own device), else one CPU."""
    if device.startswith("cuda:"):
        raise UserError(
            f"with --executor ray pass --device cuda, not {device}: Ray gives each job its own GPU"
        )
    return {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}


def run_on_ray(
    plan: Plan, todo: list[tuple[int, Job]], progress: JobProgress, retries: int
) -> dict[int, JobResult]:
    """Submit the jobs as Ray tasks and collect them as they end (in any order)."""
    s = plan.session.settings
    ray = import_ray()
    options = {**resources(s.device), "max_retries": retries}
    if not todo:
        return {}
    connect(ray, s.ray_address)
    todo = [(i, job.with_absolute_paths()) for i, job in todo]
    if plan.swept and todo[0][1].stage == "evaluate":
        prepare = ray.remote(prepare_in_worker).options(**options)
        shared = _get(ray, prepare.remote(todo[0][1]), todo[0][1])
        if not shared.ok:
            progress.console.print(
                f"shared model-level work FAILED: {shared.error}", highlight=False, markup=False
            )
            failed = {i: _failed(job, f"shared work failed: {shared.error}") for i, job in todo}
            for result in failed.values():
                progress.ended(result, was_running=False)
            return failed
        todo = [(i, dataclasses.replace(job, shared_ready=True)) for i, job in todo]
    task = ray.remote(run_in_worker).options(**options)
    pending = {}
    for index, job in todo:
        pending[task.remote(job)] = (index, job)
        progress.started(job)
    results: dict[int, JobResult] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index, job = pending.pop(ready[0])
        results[index] = _get(ray, ready[0], job)
        progress.ended(results[index])
    return results


def _failed(job: Job, error: str) -> JobResult:
    return JobResult(job.name, job.out, False, error=error)


def _get(ray: Any, ref: Any, job: Job) -> JobResult:
    """A task's result; a worker that died (after Ray's retries) is a failed job."""
    try:
        result: JobResult = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return _failed(job, one_line(exc))
    return result


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
