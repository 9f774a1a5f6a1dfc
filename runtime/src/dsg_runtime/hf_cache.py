"""What a KV cache argument holds: how many positions it already has.

Both the layer hooks (:mod:`dsg_runtime.hf`, which tell a prompt from a continuation) and the
reading of a ``generate`` call (:mod:`dsg_runtime.hf_generation`, which refuses a cache that is
already filled) need it, so it lives below both.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    lengths = cache_lengths((value,))
    return lengths[0] if lengths else None


def cache_lengths(values: Iterable[Any]) -> tuple[int, ...]:
    """Positions already held by each KV cache among ``values``; what is no cache is skipped
    (the decoder's pre-hook reads a whole call's arguments this way on every decode step)."""
    from transformers.cache_utils import Cache

    lengths = []
    for value in values:
        if isinstance(value, Cache):
            lengths.append(int(value.get_seq_length()))
        elif _is_legacy_cache(value):
            lengths.append(int(value[0][0].shape[2]))  # [B, H, S, D]: S
    return tuple(lengths)
