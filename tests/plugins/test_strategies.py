"""The strategies plugin: what it registers and what its strategies build."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import dsg_strategies
import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from dsg.api.interfaces import Intervention, Strategy
from dsg.api.plugins import build_registry
from dsg.guardrail import DynamicClamp, StaticClamp


def one_feature_sae() -> Any:
    """Feature 0 reads the first coordinate and writes it back; JumpReLU threshold 0.5."""
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=2, d_sae=2, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(0.5)
    return sae


# BOS, then a hit on feature 0 at t1 only: rate = 1/4
X = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.1, 0.0]]])
MASK = torch.ones(1, 4, dtype=torch.bool)


def registered() -> dict[str, Any]:
    registry = build_registry()
    assert registry.owners["strategies"]["dynamic"] == "strategies"
    assert registry.owners["strategies"]["static"] == "strategies"
    return registry.entries["strategies"]


def test_plugin_registers_dynamic_static_and_windowed() -> None:
    seen: list[Any] = []
    dsg_strategies.register_strategies(seen.append)
    assert [s.name for s in seen] == ["dynamic", "static", "windowed"]
    strategies = registered()
    for name, uses_threshold in [("dynamic", True), ("static", False), ("windowed", True)]:
        strategy = strategies[name]
        assert isinstance(strategy, Strategy)
        assert strategy.uses_threshold is uses_threshold
        assert strategy.description


@pytest.mark.parametrize(("threshold", "fires"), [(0.2, True), (0.25, False), (0.3, False)])
def test_dynamic_strategy_builds_the_gated_clamp(threshold: float, fires: bool) -> None:
    clamp = registered()["dynamic"].build(one_feature_sae(), torch.tensor([0]), threshold, 10.0)
    assert isinstance(clamp, DynamicClamp) and isinstance(clamp, Intervention)
    out = clamp(X, MASK)
    assert clamp.fired.tolist() == [fires]
    expected = X.clone()
    if fires:
        expected[0, 1, 0] = -10.0  # 2 + (-10 - 2) * 1
    assert torch.equal(out, expected)


def test_static_strategy_ignores_the_threshold() -> None:
    clamp = registered()["static"].build(one_feature_sae(), torch.tensor([0]), 0.99, 10.0)
    assert isinstance(clamp, StaticClamp) and isinstance(clamp, Intervention)
    out = clamp(X, MASK)
    assert clamp.fired.tolist() == [True]
    assert out[0, 1].tolist() == [-10.0, 0.0]
    assert torch.equal(out[0, [0, 2, 3]], X[0, [0, 2, 3]])


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = "import sys, dsg_strategies; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_each_strategy_words_its_own_decision_and_gate() -> None:
    """`dsg generate`'s line and the evaluation table's gate cell come from the strategy, so the
    core names none; the built-in strategies keep their words."""
    from dsg.api import DescribedParams
    from dsg_runtime.protocols import DescribedStrategy

    strategies = build_registry().entries["strategies"]
    dynamic, static, windowed = (strategies[n] for n in ("dynamic", "static", "windowed"))
    assert all(isinstance(s, DescribedStrategy) for s in strategies.values())
    assert dynamic.describe_decision(True, 0.25, 0.1, {}) == (
        "guardrail fired: prompt hit rate 0.2500 > threshold 0.1000"
    )
    assert dynamic.describe_decision(False, 0.05, 0.1, {}) == (
        "guardrail did not fire: prompt hit rate 0.0500 <= threshold 0.1000"
    )
    assert static.describe_decision(True, 0.25, None, {}) == (
        "guardrail fired (static; prompt hit rate 0.2500)"
    )
    window = {"window": 16, "window_threshold": 0.25}
    assert windowed.describe_decision(False, 0.05, 0.1, window) == (
        "guardrail did not fire (windowed: prompt hit rate 0.0500 against threshold 0.1000, or "
        "a 16-token window's rate against 0.2500)"
    )
    assert isinstance(windowed, DescribedParams) and windowed.describe_params(window) == " w16>0.25"
    assert not isinstance(dynamic, DescribedParams)  # no params: the threshold says it all
