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
from dsg_runtime.strategies import BUILT_IN


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
