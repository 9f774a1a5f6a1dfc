"""What a KV cache argument holds: how many positions it already has.

Both the layer hooks (:mod:`dsg_runtime.hf`, which tell a prompt from a continuation) and the
reading of a ``generate`` call (:mod:`dsg_runtime.hf_generation`, which refuses a cache that is
already filled) need it, so it lives below both.
"""

from __future__ import annotations

from typing import Any


def _is_legacy_cache(value: Any) -> bool:
    """transformers 4.x's legacy cache: one ``(key, value)`` pair of ``[B, H, S, D]`` per layer."""
    import torch

    return (
        isinstance(value, tuple)
        and len(value) > 0
        and all(
            isinstance(pair, tuple | list)
            and len(pair) >= 2
            and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in pair[:2])
            for pair in value
        )
    )


def cache_length(value: Any) -> int | None:
    """Positions already held by a KV cache argument, or None when ``value`` is no cache."""
    from transformers.cache_utils import Cache

    if isinstance(value, Cache):
        return int(value.get_seq_length())
    if _is_legacy_cache(value):
        return int(value[0][0].shape[2])  # [B, H, S, D]: S
    return None
