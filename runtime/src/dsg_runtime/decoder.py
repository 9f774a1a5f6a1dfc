"""Where a transformers causal LM keeps its decoder layers, for every hook the runtime puts on
one (the guardrail's, and the probe that checks a model against a bundle's binding record)."""

from __future__ import annotations

from typing import Any

from dsg_runtime.errors import UserError


def decoder_of(model: Any) -> Any:
    """The module that owns the decoder layer list (``model.model`` for Llama/Gemma-style LMs)."""
    for decoder in (getattr(model, "model", None), _get_decoder(model)):
        if decoder is not None and getattr(decoder, "layers", None) is not None:
            return decoder
    raise UserError(
        f"cannot find the decoder layers of a {type(model).__name__}; the guardrail supports "
        "causal LMs with model.model.layers (Gemma, Llama, Mistral, Qwen, ...)"
    )


def _get_decoder(model: Any) -> Any:
    return model.get_decoder() if hasattr(model, "get_decoder") else None


def decoder_layers(model: Any) -> Any:
    """The decoder layer list of a causal LM."""
    return decoder_of(model).layers
