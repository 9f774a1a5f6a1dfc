"""The guardrail on a Hugging Face ``transformers`` causal LM: :mod:`dsg_runtime.hf`, at the path
dsg has always offered it."""

from dsg_runtime.hf import (
    GuardrailHandle,
    GuardrailStateError,
    attach,
    cache_length,
    decoder_layers,
    decoder_of,
)

__all__ = [
    "GuardrailHandle",
    "GuardrailStateError",
    "attach",
    "cache_length",
    "decoder_layers",
    "decoder_of",
]
