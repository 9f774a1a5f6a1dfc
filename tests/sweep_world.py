"""A sweep's worth of tiny SAEs that every process (the test, each Ray worker) rebuilds
identically from seeds, and a registry factory that jobs carry to their workers.

Beside the tiny model and case it serves ``sweep/...`` SAEs at two layers and two widths, one
whose weights fail to load, and one that kills its own worker (``kill -9``) midway through its
first encode when an "armed" file exists (the file is removed first, so the rerun survives).
Every computation of the shared model-level artifacts is logged to ``{out}/shared-commits.log``
so a test can count them across processes.
"""

from __future__ import annotations

import functools
import os
import re
import signal
from pathlib import Path
from typing import Any

import torch
from tiny import TinyPlugin, TinyWorld, build_sae

from dsg.api.hookspecs import hookimpl
from dsg.api.interfaces import LoadedSAE
from dsg.api.plugins import Registry, build_registry
from dsg.core.artifacts import RunDir

# spec -> (layer, d_sae, seed)
GOOD = {
    "sweep/layer_0/width_64/average_l0_5": (0, 64, 1),
    "sweep/layer_1/width_64/average_l0_9": (1, 64, 2),
    "sweep/layer_0/width_32/average_l0_7": (0, 32, 3),
}
KILLER = "sweep/layer_1/width_32/killed-once"
BROKEN = "sweep/broken"
ALL = [*GOOD, KILLER, BROKEN]
SHARED_STAGES = ("subsets", "baseline")
ARMED = "armed"


class SweepSAELoader:
    """Serves and lists the ``sweep/...`` SAEs."""

    name = "sweep-sae"
    description = "tiny SAEs at two layers and two widths, one broken, one that kills its worker"

    def __init__(self, world: TinyWorld, directory: Path) -> None:
        self.world = world
        self.directory = directory

    def can_load(self, spec: str) -> bool:
        return spec in ALL

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        if spec == BROKEN:
            raise RuntimeError("the SAE weights are corrupt\nsecond line never shown")
        layer, d_sae, seed = GOOD.get(spec, (1, 32, 4))
        hook = f"blocks.{layer}.hook_resid_post"
        sae = build_sae(
            self.world.model.cfg.d_model, d_sae, hook_name=hook, seed=seed, threshold=0.3
        )
        if spec == KILLER:
            sae.encode = self._killing(sae.encode)
        return LoadedSAE(sae, spec, hook, layer, "tiny", fingerprint=spec)

    def _killing(self, encode: Any) -> Any:
        armed = self.directory / ARMED

        def encode_or_die(x: torch.Tensor) -> torch.Tensor:
            if armed.exists():
                armed.unlink()
                os.kill(os.getpid(), signal.SIGKILL)
            return encode(x)

        return encode_or_die

    def expand(self, release_pattern: str, id_pattern: str) -> list[str]:
        return [
            spec
            for spec in ALL
            if re.fullmatch(release_pattern, spec.partition("/")[0])
            and re.fullmatch(id_pattern, spec.partition("/")[2])
        ]


class SweepPlugin:
    def __init__(self, world: TinyWorld, directory: Path) -> None:
        self.loader = SweepSAELoader(world, directory)

    @hookimpl
    def register_sae_loaders(self, register: Any) -> None:
        register(self.loader)


def counting(commit: Any) -> Any:
    """``RunDir.commit`` that also logs each subsets or baseline artifact it writes, beside
    the shared folder."""

    def commit_and_count(self: RunDir, stage: str, *args: Any, **kwargs: Any) -> Path:
        if stage in SHARED_STAGES:
            self.root.parent.mkdir(parents=True, exist_ok=True)  # run directories are made lazily
            with (self.root.parent / "shared-commits.log").open("a") as log:
                log.write(f"{stage} {os.getpid()}\n")
        return commit(self, stage, *args, **kwargs)

    return commit_and_count


@functools.cache
def registry_for(directory: str) -> Registry:
    """The tiny plugins over a world built once per process in ``directory``."""
    root = Path(directory)
    world = TinyWorld(root / f"world-{os.getpid()}", threshold=0.3)
    reg = build_registry(
        extra_plugins=[("tiny", TinyPlugin(world)), ("sweep", SweepPlugin(world, root))]
    )
    reg.entries["sae_loaders"].pop("sae-lens", None)
    return reg


@functools.cache
def worker_registry(directory: str) -> Registry:
    """:func:`registry_for` on a Ray worker, which also counts its shared commits (the test
    process counts its own under monkeypatch)."""
    RunDir.commit = counting(RunDir.commit)  # type: ignore[method-assign]
    return registry_for(directory)


def shared_commits(out: Path) -> list[str]:
    log = out / "shared-commits.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []
