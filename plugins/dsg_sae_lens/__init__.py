"""dsg plugin: SAE loaders for sae_lens.

``sae-lens`` loads any SAE of sae_lens's pretrained releases by ``release/sae_id`` (Gemma Scope
among them); ``local-sae`` loads an SAE folder written by sae_lens's ``SAE.save_model``. The
``dsg saes`` command lists the pretrained releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsg.api import LoadedSAE, Register, hookimpl
from dsg_sae_lens.commands import saes
from dsg_sae_lens.local_dir import is_sae_dir, load_sae_dir
from dsg_sae_lens.pretrained import load_pretrained, matches, split_spec

if TYPE_CHECKING:
    import torch


class LocalSAELoader:
    name = "local-sae"
    description = "A sae_lens SAE folder (cfg.json + sae_weights.safetensors)"

    def can_load(self, spec: str) -> bool:
        spec = spec.removeprefix(f"{self.name}:")
        return is_sae_dir(spec)

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        spec = spec.removeprefix(f"{self.name}:")  # an explicit LOADER: prefix
        return load_sae_dir(spec, device=device, dtype=dtype)


class PretrainedSAELoader:
    name = "sae-lens"
    description = "A sae_lens pretrained SAE, RELEASE/SAE_ID (see `dsg saes`)"

    def can_load(self, spec: str) -> bool:
        spec = spec.removeprefix(f"{self.name}:")
        return split_spec(spec) is not None

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        spec = spec.removeprefix(f"{self.name}:")  # an explicit LOADER: prefix
        return load_pretrained(spec, device=device, dtype=dtype)

    def expand(self, release_pattern: str, id_pattern: str) -> list[str]:
        """Every ``release/sae_id`` whose names fully match the regexes, in directory order."""
        return [f"{release}/{sae_id}" for release, sae_id in matches(release_pattern, id_pattern)]


@hookimpl
def register_sae_loaders(register: Register) -> None:
    register(LocalSAELoader())
    register(PretrainedSAELoader())


@hookimpl
def register_commands(register: Register) -> None:
    register(saes)
