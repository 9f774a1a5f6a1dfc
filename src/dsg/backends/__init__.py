"""Model backends: what runs the forward passes of the sparsity stage and the MCQ engine.

``transformer_lens`` runs the TransformerLens model the loader returned (the reference's
numerics); ``transformers`` runs the same checkpoint in transformers with its own attention
kernels. ``auto`` picks TransformerLens on the CPU and transformers elsewhere (see
docs/evaluate.md#backends).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsg.backends.base import ModelBackend
from dsg.settings import BACKENDS

if TYPE_CHECKING:
    import torch

    from dsg.interfaces import LoadedModel

__all__ = ["BACKENDS", "ModelBackend", "open_backend", "resolve_backend"]


def resolve_backend(name: str, device: str) -> str:
    """The backend ``auto`` stands for on ``device``; other names are returned unchanged."""
    if name != "auto":
        return name
    return "transformer_lens" if device == "cpu" else "transformers"


def open_backend(
    name: str, loaded: LoadedModel, *, device: str, dtype: torch.dtype
) -> ModelBackend:
    """The backend ``name`` (resolved, not ``auto``) for a loaded model."""
    from dsg.backends.transformer_lens import TransformerLensBackend

    if name == "transformer_lens":
        return TransformerLensBackend(loaded.model, loaded.tokenizer)
    from dsg.backends.transformers import TransformersBackend, load_causal_lm
    from dsg.errors import UserError
    from dsg.generate import hf_reference

    reference = hf_reference(loaded)
    if reference is None:
        raise UserError(
            f"model {loaded.spec!r} has no transformers checkpoint (its loader names none); "
            "pass --backend transformer_lens"
        )
    model = load_causal_lm(reference, device=device, dtype=dtype)
    return TransformersBackend(model, loaded.tokenizer)
