"""A strategy written as just a gate (:class:`dsg.GateStrategy`): evaluating it and carrying it
in a bundle are derived from the one ``gate`` method, and both decide the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from bundles import batch, loaded, random_sae, split_threshold

from dsg import GateStrategy
from dsg.bundle import Bundle, from_sae
from dsg.guardrail import DynamicClamp
from dsg_runtime.guardrail import AnyHitGate, ThresholdGate

FEATURES = [7, 3, 30, 12, 0]


class HalfThreshold(GateStrategy):
    """The dynamic gate at half the calibrated threshold, the half stored in the bundle."""

    name = "half-threshold"
    description = "dynamic at threshold * factor"

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {"factor": 0.5}

    def gate(self, threshold: float | None, params: dict[str, Any]) -> ThresholdGate:
        assert threshold is not None
        return ThresholdGate(threshold * params["factor"])


class Everywhere(GateStrategy):
    name = "everywhere"
    description = "clamp every row with a hit"
    uses_threshold = False

    def gate(self, threshold: float | None, params: dict[str, Any]) -> AnyHitGate:
        assert threshold is None  # a strategy that reads no threshold is never handed one
        return AnyHitGate()


def test_build_is_the_gate_on_the_sae_features() -> None:
    sae = random_sae("jumprelu")
    resid, mask = batch()
    alpha = split_threshold(sae, FEATURES, resid, mask)
    guard = HalfThreshold().build(sae, FEATURES, 2 * alpha, 50.0)
    reference = DynamicClamp(sae, FEATURES, alpha, 50.0)
    assert torch.equal(guard(resid, mask), reference(resid, mask))
    assert torch.equal(guard.fired, reference.fired)
    assert 0 < int(reference.fired.sum()) < 4


def test_the_bundle_decides_as_build_does(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    resid, mask = batch(3)
    alpha = split_threshold(sae, FEATURES, resid, mask)
    for strategy, threshold in ((HalfThreshold(), 2 * alpha), (Everywhere(), 0.7)):
        strategies = {strategy.name: strategy}
        built = strategy.build(sae, FEATURES, threshold, 30.0)
        expected = built(resid, mask)
        exported = from_sae(
            loaded(sae),
            FEATURES,
            threshold=threshold,
            multiplier=30.0,
            strategy=strategy.name,
            strategies=strategies,
        )
        exported.save(tmp_path / strategy.name)
        guard = Bundle.load(tmp_path / strategy.name, strategies).guardrail()
        assert torch.equal(guard(resid, mask), expected), strategy.name
        assert torch.equal(guard.fired, built.fired), strategy.name
