"""Which gates the vLLM plugin serves: the ones that keep the prompt's decision (built-in or a
plugin's, by ``keeps_decision = True``) and the static clamp; any other is refused, since the
worker could not apply its rule to generated tokens. (No vLLM needed: this is the plugin's
reading of the bundle.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_llama import tiny_bundle

from dsg_runtime.errors import UserError
from dsg_runtime.guardrail import AnyHitGate
from dsg_runtime.vllm.decision import gate_carries_decision


class _PluginGate:
    """A plugin's gate: the prompt's decision carried, said or not (``says``)."""

    def __init__(self, says: Any) -> None:
        if says is not None:
            self.keeps_decision = says

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return rates > 0.5

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired


@pytest.mark.parametrize("strategy", ["dynamic", "windowed"])
def test_the_built_in_deciding_gates_carry_their_decision(strategy: str) -> None:
    params = {"window": 4, "window_threshold": 0.5} if strategy == "windowed" else None
    bundle = tiny_bundle(strategy, params=params)
    assert gate_carries_decision(bundle, bundle.guardrail().gate) is True


def test_the_static_clamp_does_not_carry_a_decision() -> None:
    bundle = tiny_bundle("static", None)
    assert isinstance(bundle.guardrail().gate, AnyHitGate)
    assert gate_carries_decision(bundle, bundle.guardrail().gate) is False


def test_a_plugin_gate_that_says_it_keeps_the_decision_is_served() -> None:
    assert gate_carries_decision(tiny_bundle(), _PluginGate(True)) is True


@pytest.mark.parametrize("says", [None, False, 1], ids=["unsaid", "false", "truthy"])
def test_a_plugin_gate_that_does_not_say_so_is_refused(says: Any) -> None:
    with pytest.raises(UserError) as refused:
        gate_carries_decision(tiny_bundle(), _PluginGate(says))
    assert str(refused.value) == (
        "the vLLM guardrail does not know how the 'dynamic' strategy's gate carries its decision "
        "to generated tokens (a gate whose carry returns the prompt's decision says "
        "keeps_decision = True); serve it with dsg.hf"
    )
