"""Making any host synchronisation raise, as a GPU's sync debug mode does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

SYNCING_METHODS = ("__bool__", "item", "nonzero", "tolist", "__int__", "__float__", "numpy")


@contextmanager
def host_sync_forbidden() -> Iterator[None]:
    """Every tensor operation that copies a value to the host raises, as
    ``torch.cuda.set_sync_debug_mode("error")`` would on a GPU; boolean-mask indexing (which
    needs the count of True entries on the host) raises too."""
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING_METHODS}
    get, put = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def forbidden(name: str) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"host synchronisation: Tensor.{name}")

        return method

    def is_mask(index: Any) -> bool:
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)

    def checked_get(self: torch.Tensor, index: Any) -> Any:
        if is_mask(index):
            raise AssertionError("host synchronisation: boolean-mask indexing")
        return get(self, index)

    def checked_put(self: torch.Tensor, index: Any, value: Any) -> None:
        if is_mask(index):
            raise AssertionError("host synchronisation: boolean-mask assignment")
        put(self, index, value)

    try:
        for name in SYNCING_METHODS:
            setattr(torch.Tensor, name, forbidden(name))
        torch.Tensor.__getitem__ = checked_get  # type: ignore[method-assign,assignment]
        torch.Tensor.__setitem__ = checked_put  # type: ignore[method-assign,assignment]
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        torch.Tensor.__getitem__ = get  # type: ignore[method-assign]
        torch.Tensor.__setitem__ = put  # type: ignore[method-assign]
