"""How many positions a KV cache argument holds (dsg_runtime.hf_cache), for transformers'
``Cache`` objects and 4.x's legacy tuples of ``(key, value)`` pairs of ``[B, H, S, D]``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache

from dsg_runtime.hf_cache import cache_length

HEADS, POSITIONS = 3, 5  # unequal, so reading the wrong dimension gives another number


def pair(positions: int = POSITIONS, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (2, HEADS, positions, 4)[:dim]
    return torch.zeros(shape), torch.zeros(shape)


def test_a_cache_object_reports_its_positions() -> None:
    cache = DynamicCache()
    assert cache_length(cache) == 0
    cache.update(*pair(), layer_idx=0)
    assert cache_length(cache) == POSITIONS


@pytest.mark.parametrize(
    ("value", "positions"),
    [
        ((pair(),), POSITIONS),  # one layer
        ((pair(), pair()), POSITIONS),  # two layers
        ([pair()], None),  # a list of layers is not a legacy cache
        ((pair() + ("extra",),), POSITIONS),  # only the key and value are read
        ((), None),  # no layers
        (((1, 2),), None),  # pairs of non-tensors
        ((pair(dim=3),), None),  # three-dimensional keys and values
        ((pair()[:1],), None),  # a key without its value
        (torch.zeros(2, HEADS, POSITIONS, 4), None),  # a tensor
        (None, None),
    ],
    ids=[
        "one-layer",
        "two-layers",
        "list",
        "extra-entries",
        "empty",
        "not-tensors",
        "3-d",
        "key-only",
        "tensor",
        "none",
    ],
)
def test_legacy_caches_are_read_by_their_first_key(value: Any, positions: int | None) -> None:
    assert cache_length(value) == positions
