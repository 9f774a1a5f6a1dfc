"""Several SAEs in one command: ``--sae-release-pattern`` / ``--sae-id-pattern``.

The patterns are expanded by the SAE loaders that offer ``expand`` (see
:class:`~dsg.api.interfaces.ExpandingSAELoader`), so the core names no SAE release. Each
matching SAE runs as one job (see :mod:`dsg.runs.jobs`) with its own run directory
``{out}/{sanitised spec}``; the artifacts that do not depend on the SAE go to ``{out}/shared``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsg.api.plugins import Registry
from dsg.engine.session import Session
from dsg.runs.jobs import SHARED_DIR, Job, job_key
from dsg.runs.ray_connect import check_ray_address

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def folder_name(spec: str) -> str:
    """A directory name for an SAE spec (``release/layer_3/id`` -> ``release__layer_3__id``)."""
    name = UNSAFE.sub("_", spec.replace("/", "__")).strip("._") or "sae"
    if name != spec.replace("/", "__") or "__" in spec:  # keep distinct specs apart
        name += "-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    return name


@dataclass(frozen=True)
class Plan:
    """The opened base session and the jobs of one command (one job without SAE patterns)."""

    session: Session
    jobs: list[Job]
    swept: bool


def plan(
    stage: str,
    cli: dict[str, Any],
    config_file: Path | None = None,
    registry: Callable[[], Registry] | None = None,
) -> Plan:
    """Open the session, expand the SAE patterns and describe one job per matching SAE, each
    writing under ``{out}/{folder_name(spec)}`` and sharing ``{out}/shared``.

    All specs are expanded before any job runs, so a bad pattern fails before any work."""
    base = Session.open(cli, config_file=config_file, reg=registry() if registry else None)
    s = base.settings
    check_ray_address(s, cli)
    if s.sae_release_pattern is None and s.sae_id_pattern is None:
        job = Job(stage, s, None, s.out, registry)
        return Plan(base, [dataclasses.replace(job, key=job_key(job))], swept=False)
    jobs = []
    patterns = (s.sae_release_pattern or ".*", s.sae_id_pattern or ".*")
    for spec in base.registry.expand_saes(*patterns):
        out = s.out / folder_name(spec.partition(":")[2])
        settings = base.for_sae(spec, out).settings
        job = Job(stage, settings, spec, s.out / SHARED_DIR, registry)
        jobs.append(dataclasses.replace(job, key=job_key(job)))
    return Plan(base, jobs, swept=True)
