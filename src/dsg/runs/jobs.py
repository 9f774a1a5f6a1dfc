"""One job of a sweep: one stage for one SAE, in its own run directory.

A job runs the same way in this process (the ``local`` executor) and on a Ray worker: it opens
its session from plain data (the command's options, the config file, the SAE spec), runs the
stage, and writes ``job.json`` last. A rerun trusts a job only through that file, so a worker
killed mid-job leaves nothing a rerun skips; the stages' own artifacts are atomic and keyed, so
the rerun also reuses whatever the killed job had finished.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.config.settings import NOT_KEYED, values_of
from dsg.core.artifacts import (
    DIGEST_FIELD,
    artifact_key,
    canonical_json,
    file_sha256,
    json_sha256,
    read_json,
    write_json,
)
from dsg.core.errors import UserError, one_line

if TYPE_CHECKING:
    from dsg.api.plugins import Registry
    from dsg.config.settings import Settings
    from dsg.engine.session import Session

JOB_FILE = "job.json"
JOB_VERSION = 1
SHARED_DIR = "shared"
L0_IN_ID = re.compile(r"average_l0_(\d+)")


def _sparsity(session: Session) -> list[Path]:
    from dsg.stages import sparsity

    return [sparsity.ensure(session).folder]


def _select(session: Session) -> list[Path]:
    from dsg.stages import select

    return [sel.path for sel in select.ensure(session)]


def _evaluate(session: Session) -> list[Path]:
    from dsg.stages.evaluate import evaluate

    return [evaluate.run(session)]


def _muse_export(session: Session) -> list[Path]:
    from dsg.stages import muse_export, open_unlearning_export

    bundles = [b.path for b in muse_export.export(session)]
    configs = open_unlearning_export.export(session, bundles)
    return bundles if configs is None else [*bundles, configs]


def stage_action(stage: str) -> Callable[[Session], list[Path]]:
    """The function that runs ``stage`` on a session and returns the paths it wrote."""
    actions = {
        "sparsity": _sparsity,
        "select": _select,
        "evaluate": _evaluate,
        "muse-export": _muse_export,
    }
    return actions[stage]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run one SAE, as plain data: the stage and the SAE's fully
    resolved settings (so a worker reads no config file of its own).

    ``spec`` is the SAE as ``loader:spec``, or None for a run without SAE patterns.
    ``registry`` builds the plugin registry on the worker; None means the installed plugins."""

    stage: str
    settings: Settings
    spec: str | None
    shared_out: Path
    registry: Callable[[], Registry] | None = None
    key: str = ""
    shared_ready: bool = False
    """The shared model-level work was done before this job (spares it under ``--force``)."""

    @property
    def out(self) -> Path:
        return self.settings.out

    @property
    def name(self) -> str:
        """The SAE as the user wrote it (no ``loader:`` prefix), or the run directory."""
        return self.spec.partition(":")[2] if self.spec else str(self.out)

    def with_absolute_paths(self) -> Job:
        """This job with every path absolute, as a worker on another node (or in another
        directory) needs them; the run directory must be on storage every node shares."""
        return dataclasses.replace(
            self, settings=absolute_paths(self.settings), shared_out=resolved(self.shared_out)
        )


def resolved(path: Path) -> Path:
    """``path`` absolute with its links resolved; one that cannot be resolved (a link loop, a
    name too long) only made absolute, for the stage that uses it to report."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop
        return path.absolute()


def absolute_paths(settings: Settings) -> Settings:
    def optional(path: Path | None) -> Path | None:
        return resolved(path) if path is not None else None

    return dataclasses.replace(
        settings,
        out=resolved(settings.out),
        data_dir=optional(settings.data_dir),
        forget_corpus=optional(settings.forget_corpus),
        retain_corpus=optional(settings.retain_corpus),
    )


@dataclass
class JobResult:
    """How a job ended; ``facts`` describe its SAE (hook, layer, width, L0) for the summary."""

    name: str
    out: Path
    ok: bool
    paths: list[Path] = field(default_factory=list)
    error: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def job_key(job: Job) -> str:
    """A hash of the stage, the job's resolved settings (paths made absolute, so both
    executors agree) and the dsg version."""
    resolved = absolute_paths(job.settings)
    settings = {k: v for k, v in values_of(resolved).items() if k not in NOT_KEYED}
    inputs = {
        "stage": job.stage,
        "settings": canonical_json(settings),
        "dsg": importlib.metadata.version("dsg"),
    }
    return artifact_key("job", JOB_VERSION, inputs)


def finished(job: Job) -> JobResult | None:
    """The result a finished job left in ``job.json``, when its key matches and its outputs
    are all there; None otherwise (a job killed before the end never wrote the file)."""
    path = job.out / JOB_FILE
    if not job.key or not path.is_file():
        return None
    done = read_json(path)
    if not isinstance(done, dict) or done.get("key") != job.key:
        return None
    paths = [Path(p) for p in done.get("paths", [])]
    if not all(p.exists() for p in paths):
        return None
    check_job_intact(path, done, paths)
    return JobResult(job.name, job.out, True, paths, facts=done.get("facts", {}), skipped=True)


def output_hashes(paths: list[Path]) -> dict[str, str]:
    """The sha256 of each output that is a file (a report); folders check themselves."""
    return {str(p): file_sha256(p) for p in paths if p.is_file()}


def check_job_intact(path: Path, done: dict[str, Any], paths: list[Path]) -> None:
    """``job.json`` as written and its file outputs unchanged, or a UserError: a skipped job's
    facts and report feed the sweep summary, so an edited one must not pass as finished."""
    recorded = {k: v for k, v in done.items() if k != DIGEST_FIELD}
    if done.get(DIGEST_FIELD) != json_sha256(recorded):
        problem = f"{JOB_FILE} was edited"
    elif done.get("outputs") != output_hashes(paths):
        problem = "an output it lists was edited or replaced"
    else:
        return
    raise UserError(
        f"{path.parent} changed after dsg wrote it ({problem}); rerun with --force to recompute "
        "it, or delete that folder"
    )


def sae_facts(session: Session) -> dict[str, Any]:
    """Hook, layer, width (d_sae) and L0 of the job's SAE, for the sweep summary. L0 comes from
    the loader when it knows it, else from an ``average_l0_N`` SAE id, else it is None."""
    from dsg_runtime.hook_names import hook_layer_of

    loaded = session.sae()
    l0 = loaded.l0
    if l0 is None:
        found = L0_IN_ID.search(loaded.spec)
        l0 = float(found.group(1)) if found else None
    try:
        layer: int | None = hook_layer_of(loaded.hook_name)
    except UserError:
        layer = None
    return {
        "hook": loaded.hook_name,
        "layer": layer,
        "d_sae": int(loaded.sae.cfg.d_sae),
        "l0": l0,
    }


def execute(job: Job, session: Session) -> JobResult:
    """Run the job's stage on ``session``; any error is the job's result, not raised, so the
    other jobs go on. ``job.json`` is written after every output of the stage."""
    try:
        paths = stage_action(job.stage)(session)
        facts = sae_facts(session)
    except Exception as exc:
        return JobResult(job.name, job.out, False, error=one_line(exc))
    if job.key:
        done = {
            "key": job.key,
            "stage": job.stage,
            "spec": job.spec,
            "paths": [str(p) for p in paths],
            "outputs": output_hashes(paths),
            "facts": facts,
        }
        write_json(job.out / JOB_FILE, {**done, DIGEST_FIELD: json_sha256(done)})
    return JobResult(job.name, job.out, True, paths, facts=facts)


def open_session(job: Job) -> Session:
    """The job's session, built afresh from its settings (on a worker nothing is shared with
    the driver)."""
    from dsg.api.plugins import registry
    from dsg.core.devices import check_device
    from dsg.engine.session import Session

    check_device(job.settings.device)  # on a worker: its own devices, which the driver cannot see
    reg = job.registry() if job.registry is not None else registry()
    case = reg.get("cases", job.settings.case)
    return Session(
        job.settings,
        reg,
        case,
        shared_out=job.shared_out,
        shared_ready=job.shared_ready,
    )


def run_in_worker(job: Job) -> JobResult:
    """A job on a worker: open the session, then :func:`execute`."""
    try:
        session = open_session(job)
    except Exception as exc:
        return JobResult(job.name, job.out, False, error=one_line(exc))
    return execute(job, session)


def prepare_in_worker(job: Job) -> JobResult:
    """The sweep's shared model-level work (evaluate only), on a worker, using ``job``'s SAE
    for the hook the prompts are split at."""
    from dsg.stages.evaluate import evaluate

    try:
        evaluate.prepare_shared(open_session(job))
    except Exception as exc:
        return JobResult("shared model-level work", job.shared_out, False, error=one_line(exc))
    return JobResult("shared model-level work", job.shared_out, True)
