"""dsg plugin: the intervention strategies shipped with dsg.

``dynamic`` is the DSG guardrail (clamp only in sequences whose hit rate exceeds the calibrated
threshold); ``static`` is the paper's always-on clamping baseline. Both differ only in their gate:
the hits, rates and clamp are :class:`dsg.guardrail.Guardrail`'s. torch is imported only when a
strategy is built, so listing plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.api import Register, hookimpl

if TYPE_CHECKING:
    import torch

    from dsg.api import Gate, Intervention


class DynamicStrategy:
    """Dynamic SAE Guardrail: a per-sequence gate on the fraction of hit tokens."""

    name = "dynamic"
    description = "clamp selected features only in sequences whose hit rate exceeds the threshold"
    uses_threshold = True

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.guardrail import DynamicClamp

        return DynamicClamp(sae, features, threshold, multiplier)

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg.errors import UserError
        from dsg.guardrail import ThresholdGate

        _no_params(self.name, params)
        if threshold is None:
            raise UserError("a dynamic bundle needs a threshold; export it again")
        return ThresholdGate(threshold)


class StaticStrategy:
    """Static clamping baseline: no gate, so ``threshold`` is ignored."""

    name = "static"
    description = "clamp selected features at every token where one fires (no gate)"
    uses_threshold = False

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention:
        from dsg.guardrail import StaticClamp

        return StaticClamp(sae, features, multiplier)

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {}

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> Gate:
        from dsg.guardrail import AnyHitGate

        _no_params(self.name, params)
        return AnyHitGate()


def _no_params(strategy: str, params: dict[str, Any]) -> None:
    """dsg's strategies need no parameters beyond the threshold; a bundle that gives some was
    made for another gate."""
    from dsg.errors import UserError

    if params:
        raise UserError(f"strategy {strategy!r} takes no strategy_params, got {sorted(params)}")


@hookimpl
def register_strategies(register: Register) -> None:
    register(DynamicStrategy())
    register(StaticStrategy())
