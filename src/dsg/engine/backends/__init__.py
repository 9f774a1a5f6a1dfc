"""Model backends: what runs the forward passes of the sparsity stage and the MCQ engine.

``transformer_lens`` runs the TransformerLens model the loader returned (the reference's
numerics); ``transformers`` runs the same checkpoint in transformers with its own attention
kernels. ``auto`` picks TransformerLens on the CPU and transformers elsewhere (see
docs/evaluate.md#backends).

:data:`KINDS` is the one table of backends: a new backend is a module in this package and a row
here (its name also among the choices of ``backend`` in :mod:`dsg.config.settings`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsg.engine.backends.base import ModelBackend

if TYPE_CHECKING:
    import torch

    from dsg.api.interfaces import LoadedModel

__all__ = ["KINDS", "BackendKind", "ModelBackend", "open_backend", "resolve_backend"]


@dataclass(frozen=True)
class BackendKind:
    """How a backend opens on a loaded model. ``whole_checkpoint``: it loads the full checkpoint
    itself, so a session opens it once and shares it between stages, whatever blocks each needs."""

    open: Callable[[LoadedModel, str, torch.dtype], ModelBackend]
    whole_checkpoint: bool


def _transformer_lens(loaded: LoadedModel, device: str, dtype: torch.dtype) -> ModelBackend:
    from dsg.engine.backends.transformer_lens import TransformerLensBackend

    return TransformerLensBackend(loaded.model, loaded.tokenizer)


def _transformers(loaded: LoadedModel, device: str, dtype: torch.dtype) -> ModelBackend:
    from dsg.api.interfaces import hf_reference
    from dsg.core.errors import UserError
    from dsg.engine.backends.transformers import TransformersBackend
    from dsg.engine.loader import load_causal_lm

    reference = hf_reference(loaded)
    if reference is None:
        raise UserError(
            f"model {loaded.spec!r} has no transformers checkpoint (its loader names none); "
            "pass --backend transformer_lens"
        )
    model = load_causal_lm(reference, device=device, dtype=dtype)
    return TransformersBackend(model, loaded.tokenizer)


KINDS: dict[str, BackendKind] = {
    "transformer_lens": BackendKind(_transformer_lens, whole_checkpoint=False),
    "transformers": BackendKind(_transformers, whole_checkpoint=True),
}


def resolve_backend(name: str, device: str) -> str:
    """The backend ``auto`` stands for on ``device``; other names are returned unchanged."""
    if name != "auto":
        return name
    return "transformer_lens" if device == "cpu" else "transformers"


def open_backend(
    name: str, loaded: LoadedModel, *, device: str, dtype: torch.dtype
) -> ModelBackend:
    """The backend ``name`` (resolved, not ``auto``) for a loaded model."""
    return KINDS[name].open(loaded, device, dtype)
