"""What a gate and a bundle's strategy are, as protocols a plugin implements; importing this
module is cheap (no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Gate(Protocol):
    """Decides which rows of a batch a guardrail clamps, from tensors alone (no host sync).

    ``rates`` is ``[B]`` (hits over attended tokens, float64; float32 on MPS), ``hits`` bool
    ``[B, T]``; both return bool ``[B]``. ``carry`` decides the rows of a generation's decode
    step from the prompt's decision ``fired`` and the step's own ``hits``.

    A gate that needs the attention mask ``[B, T]`` (the ``windowed`` gate's densest window
    counts attended positions) defines ``decide(rates, hits, attention_mask) -> fired``; the
    guardrail then calls it instead of ``__call__``. A gate keeps no state between calls: a
    bundle builds its gate once, and every guardrail of the bundle shares it.

    A gate whose ``carry`` returns ``fired`` unchanged may say so with ``keeps_decision = True``:
    ``dsg.hf`` then skips the decode steps of generations in which no row fired (they would
    change nothing). Without it every step is computed.
    """

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor: ...

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class BundleStrategy(Protocol):
    """What a bundle needs of its strategy: whether it reads the threshold, the parameters it
    stores beside it, and the gate they make."""

    uses_threshold: bool

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        """JSON-serialisable parameters of the gate beyond the threshold; raise a
        :class:`~dsg_runtime.errors.UserError` when this configuration cannot be exported."""
        ...

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        """The gate for a bundle's threshold and parameters; UserError for ones it cannot use."""
        ...


@runtime_checkable
class DescribedStrategy(Protocol):
    """A bundle strategy that says in its own words how its gate decided (optional: a bundle
    loads without it)."""

    def describe_decision(
        self, fired: bool, rate: float, threshold: float | None, params: dict[str, Any]
    ) -> str:
        """One line for ``dsg generate``: whether the gate fired on a prompt of hit rate
        ``rate`` under a bundle's threshold and parameters, and why."""
        ...
