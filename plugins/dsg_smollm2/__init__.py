"""dsg plugin: an SAE for SmolLM2-135M-Instruct, trained by dsg and shipped with it, and the
real-model case ``smollm2-bio`` (:mod:`dsg_smollm2.case`).

No pretrained SAE exists for SmolLM2, so dsg trained one with ``dsg train-sae`` on WordNet's
glosses (``python -m dsg_smollm2.build_sae`` reproduces it; docs/real-model.md gives its layer,
metrics and how the layer was chosen). ``--sae smollm2-135m-instruct-sae`` loads it; ``dsg
saes`` lists it. The model itself comes from the ``gguf`` plugin (``--model
smollm2-135m-instruct``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from dsg.api import LoadedSAE, Register, UserError, hookimpl, registered
from dsg_smollm2.case import SmolLM2BioCase

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).parent / "data"
SAE_DIR = DATA / "sae"
SAE_NAME = "smollm2-135m-instruct-sae"


def shipped_hook() -> str:
    """The hook the shipped SAE reads, from its config."""
    try:
        return str(json.loads((SAE_DIR / "cfg.json").read_text())["metadata"]["hook_name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"the shipped SmolLM2 SAE in {SAE_DIR} is damaged ({exc!r}); reinstall dsg"
        ) from None


class SmolLM2SAELoader:
    """The shipped SAE under one name; its release is that name and its id the hook it reads."""

    name = "smollm2"
    description = "SmolLM2-135M-Instruct's SAE, trained by dsg on WordNet (packaged with dsg)"

    def can_load(self, spec: str) -> bool:
        return spec == SAE_NAME

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        if not self.can_load(spec):
            raise UserError(f"the {self.name} loader has one SAE, {SAE_NAME}, not {spec!r}")
        loaded = registered("sae_loaders", "local-sae").load(
            str(SAE_DIR), device=device, dtype=dtype
        )
        loaded.spec = SAE_NAME
        weights = (SAE_DIR / "sae_weights.safetensors").read_bytes()
        loaded.fingerprint = hashlib.sha256(weights).hexdigest()
        return loaded

    def expand(self, release_pattern: str, id_pattern: str) -> list[str]:
        try:
            release, sae_id = re.compile(release_pattern), re.compile(id_pattern)
        except re.error as exc:
            raise UserError(f"bad SAE pattern: {exc}") from None
        hit = release.fullmatch(SAE_NAME) and sae_id.fullmatch(shipped_hook())
        return [SAE_NAME] if hit else []


@hookimpl
def register_sae_loaders(register: Register) -> None:
    register(SmolLM2SAELoader())


@hookimpl
def register_cases(register: Register) -> None:
    register(SmolLM2BioCase())
