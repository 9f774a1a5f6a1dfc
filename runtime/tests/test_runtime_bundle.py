"""Bundles in the runtime alone: round trips, refusals, and strategies resolved without dsg."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_llama import tiny_bundle

from dsg_runtime.bundle import CONFIG_FILE, Bundle
from dsg_runtime.errors import UserError
from dsg_runtime.guardrail import AnyHitGate, ThresholdGate, WindowGate
from dsg_runtime.strategies import BUILT_IN, bundle_strategy


def refused(call: Any, *args: Any) -> str:
    """The one line of the UserError ``call(*args)`` raises."""
    with pytest.raises(UserError) as caught:
        call(*args)
    return str(caught.value)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    bundle = tiny_bundle(threshold=0.25, multiplier=7.5)
    back = Bundle.load(bundle.save(tmp_path / "b"))
    assert back.config("") == bundle.config("")  # every described field
    for name, tensor in bundle.tensors.items():
        assert torch.equal(back.tensors[name], tensor)


def test_an_edited_bundle_is_refused(tmp_path: Path) -> None:
    directory = tiny_bundle().save(tmp_path / "b")
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["threshold"] = 0.0  # would make the guardrail fire on everything
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match="edited after export"):
        Bundle.load(directory)


@pytest.mark.parametrize(
    ("strategy", "threshold", "params", "gate"),
    [
        ("dynamic", 0.5, {}, ThresholdGate),
        ("static", None, {}, AnyHitGate),
        ("windowed", 0.5, {"window": 3, "window_threshold": 0.6}, WindowGate),
    ],
)
def test_built_in_strategies_need_no_registry(
    tmp_path: Path, strategy: str, threshold: float | None, params: dict[str, Any], gate: type
) -> None:
    bundle = Bundle.load(tiny_bundle(strategy, threshold, params=params).save(tmp_path / "b"))
    assert type(bundle.guardrail().gate) is gate
    assert set(BUILT_IN) == {"dynamic", "static", "windowed"}


def test_built_in_gates_refuse_foreign_parameters() -> None:
    with pytest.raises(UserError, match="takes no strategy_params"):
        tiny_bundle("dynamic", 0.5, params={"window": 3})
    with pytest.raises(UserError, match="needs a calibrated window"):
        tiny_bundle("windowed", 0.5, params={"window": 3})
    with pytest.raises(UserError, match="threshold 0.5 contradicts strategy 'static'"):
        tiny_bundle("static", 0.5)


def test_built_in_gates_by_hand() -> None:
    dynamic, static, windowed = (BUILT_IN[n] for n in ("dynamic", "static", "windowed"))
    assert (dynamic.uses_threshold, static.uses_threshold, windowed.uses_threshold) == (
        True,
        False,
        True,
    )
    assert [s.bundle_params(0.3) for s in (dynamic, static, windowed)] == [{}, {}, {}]
    gate = dynamic.bundle_gate(0.25, {})
    assert type(gate) is ThresholdGate and gate.threshold == 0.25
    assert type(static.bundle_gate(None, {})) is AnyHitGate
    window = windowed.bundle_gate(0.25, {"window": 3, "window_threshold": 0.5})
    assert type(window) is WindowGate
    assert (window.window, window.window_threshold, window.threshold) == (3, 0.5, 0.25)


def test_built_in_gates_refuse_with_one_line() -> None:
    dynamic, static, windowed = (BUILT_IN[n] for n in ("dynamic", "static", "windowed"))
    calibrated = {"window": 3, "window_threshold": 0.5}
    assert refused(dynamic.bundle_gate, None, {}) == (
        "a dynamic bundle needs a threshold; export it again"
    )
    assert refused(windowed.bundle_gate, None, calibrated) == (
        "a windowed bundle needs a threshold; export it again"
    )
    assert refused(static.bundle_gate, None, {"b": 1, "a": 2}) == (
        "strategy 'static' takes no strategy_params, got ['a', 'b']"
    )
    assert refused(dynamic.bundle_gate, 0.2, {"window": 3}) == (
        "strategy 'dynamic' takes no strategy_params, got ['window']"
    )
    assert refused(windowed.bundle_gate, 0.2, {**calibrated, "stride": 2}) == (
        "strategy 'windowed' takes strategy_params window, window_threshold, got "
        "['stride', 'window', 'window_threshold']"
    )
    for missing in ("window", "window_threshold"):
        params = {k: v for k, v in calibrated.items() if k != missing}
        assert refused(windowed.bundle_gate, 0.2, params) == (
            "a windowed bundle needs a calibrated window: strategy_params window and "
            "window_threshold"
        )


def test_bundle_strategy_takes_the_caller_s_strategies_first() -> None:
    assert bundle_strategy("dynamic") is BUILT_IN["dynamic"]
    assert bundle_strategy("static", None) is BUILT_IN["static"]
    plugin = AtLeastHitsStrategy()
    assert bundle_strategy("at-least", {"at-least": plugin}) is plugin
    assert bundle_strategy("dynamic", {"dynamic": plugin}) is plugin  # the registry decides
    assert bundle_strategy("windowed", {"at-least": plugin}) is BUILT_IN["windowed"]
    passed = {"dynamic": plugin, "b": plugin, "at-least": plugin}
    assert refused(bundle_strategy, "nope", passed) == (
        "strategy 'nope' is not installed (built in: dynamic, static, windowed; from plugins: "
        "at-least, b); install the plugin that provides it and pass its strategies"
    )
    assert "; from plugins: none passed in); install" in refused(bundle_strategy, "nope")
    assert refused(bundle_strategy, "bare", {"bare": object()}) == (
        "strategy 'bare' cannot be exported to a bundle: its plugin defines no "
        "bundle_params/bundle_gate (see docs/plugins.md)"
    )


class AtLeastHits:
    """A plugin's gate: a row fires with at least ``hits`` hit positions."""

    def __init__(self, hits: int) -> None:
        self.hits = hits

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return hits.sum(dim=1) >= self.hits

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired


class AtLeastHitsStrategy:
    uses_threshold = False

    def bundle_params(self, threshold: float | None) -> dict[str, Any]:
        return {"hits": 2}

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> AtLeastHits:
        return AtLeastHits(int(params["hits"]))


def test_a_plugin_strategy_resolves_only_through_the_strategies_passed_in(tmp_path: Path) -> None:
    strategies = {"at-least": AtLeastHitsStrategy()}
    bundle = tiny_bundle("at-least", None, params={"hits": 2}, strategies=strategies)
    directory = bundle.save(tmp_path / "b")
    with pytest.raises(UserError, match="'at-least' is not installed"):
        Bundle.load(directory)  # fails closed: no other gate stands in
    guard = Bundle.load(directory, strategies).guardrail()
    # hits per row after the BOS: 2, 1 and 0 -> only the first row has at least 2
    resid = torch.zeros(3, 4, 16)
    resid[:, :, :] = 0.0
    direction = bundle.tensors["W_enc"][:, 0]
    resid[0, 1:3] = direction
    resid[1, 3] = direction
    guard(resid, torch.ones(3, 4, dtype=torch.long))
    assert guard.fired is not None and guard.fired.tolist() == [True, False, False]


class CountingStrategy(AtLeastHitsStrategy):
    """Counts the gates it builds."""

    def __init__(self) -> None:
        self.built = 0

    def bundle_gate(self, threshold: float | None, params: dict[str, Any]) -> AtLeastHits:
        self.built += 1
        return super().bundle_gate(threshold, params)


def test_a_bundle_builds_its_gate_once(tmp_path: Path) -> None:
    counting = CountingStrategy()
    strategies = {"counting": counting}
    made = tiny_bundle("counting", None, params={"hits": 2}, strategies=strategies)
    guards = [made.guardrail(), made.guardrail()]
    assert counting.built == 1 and guards[0].gate is guards[1].gate is made.gate
    loaded = Bundle.load(made.save(tmp_path / "b"), strategies)
    loaded.guardrail()
    assert counting.built == 2  # one more for the bundle read back, none for its guardrail
    assert loaded.gate_strategy is counting


def test_the_runtime_imports_no_dsg_and_no_harness() -> None:
    code = (
        "import sys, dsg_runtime.bundle, dsg_runtime.hf, dsg_runtime.open_unlearning; "
        "import dsg_runtime.strategies; "
        "print(sorted(m for m in ('dsg', 'sae_lens', 'transformer_lens', 'datasets', "
        "'lm_eval', 'typer', 'rich', 'pluggy') if m in sys.modules))"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"
