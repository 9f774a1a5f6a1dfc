"""Bundles of random SAEs over a left-padded batch, and edits of a saved bundle's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from saes import random_sae as guardrail_random_sae

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE
from dsg.core.artifacts import json_sha256
from dsg.guardrail import DynamicClamp

HOOK = "blocks.1.hook_resid_post"


def random_sae(kind: str, *, d_sae: int = 48, **kwargs: Any) -> Any:
    """The guardrail tests' random SAE, a little narrower."""
    return guardrail_random_sae(kind, d_sae=d_sae, **kwargs)


def loaded(sae: Any) -> LoadedSAE:
    return LoadedSAE(sae, "test-sae", HOOK, 1, model_name="tiny", fingerprint="fp")


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of four rows of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    resid = torch.randn(4, 9, 16, generator=gen)
    lengths = torch.tensor([9, 7, 4, 2])
    mask = torch.arange(9)[None, :] >= (9 - lengths)[:, None]
    return resid, mask


def split_threshold(
    sae: Any, features: list[int], resid: torch.Tensor, mask: torch.Tensor
) -> float:
    """A threshold between the batch's row rates, so some rows fire and some do not."""
    probe = DynamicClamp(sae, features, 0.0, 1.0)
    probe(resid, mask)
    rates = sorted(set(probe.rates.tolist()))
    assert len(rates) > 1
    middle = len(rates) // 2
    return (rates[middle - 1] + rates[middle]) / 2


def edit_config(directory: Path, edit: Any, *, resign: bool = False) -> None:
    """Apply ``edit`` to bundle.json; with ``resign``, recompute its digest as a forger would."""
    config = json.loads((directory / CONFIG_FILE).read_text())
    edit(config)
    if resign:
        config["sha256"] = json_sha256({k: v for k, v in config.items() if k != "sha256"})
    (directory / CONFIG_FILE).write_text(json.dumps(config))
