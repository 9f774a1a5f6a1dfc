"""What a decode step of ``generate`` costs the guardrail: a generation in which no row fired
skips the guardrail's arithmetic on its steps when the gate keeps the prompt's decision, and
every step is computed when a row fired, when the gate clamps on a step's own hits (``static``)
or when the gate does not say. Skipped or not, the tokens are the same."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_llama import HIT, QUIET, left_padded, tiny_bundle, tiny_llama

from dsg_runtime.guardrail import Guardrail, ThresholdGate
from dsg_runtime.hf import attach

# threshold 0.8: rates 0 and 3/4 stay quiet, 11/12 fires
QUIET_PROMPTS = [[QUIET] * 12, [QUIET] + [HIT] * 3]
MIXED_PROMPTS = [[HIT] * 12, [QUIET] + [HIT] * 3]
NEW_TOKENS = 5
EVERY_STEP = [12] + [1] * (NEW_TOKENS - 1)  # the prompt pass, then one position a step
SETTINGS = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": QUIET}


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every pass on which the guardrail computes its features."""
    seen: list[int] = []
    activations = Guardrail.activations

    def counted(self: Guardrail, resid: torch.Tensor) -> torch.Tensor:
        seen.append(resid.shape[1])
        return activations(self, resid)

    monkeypatch.setattr(Guardrail, "activations", counted)
    return seen


class _UnsaidGate:
    """The dynamic gate as a plugin might write it, without ``keeps_decision``."""

    def __init__(self) -> None:
        self._gate = ThresholdGate(0.8)

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return self._gate(rates, hits)

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired


def _generate(model: Any, prompts: list[list[int]], strategy: str, gate: Any = None) -> Any:
    ids, mask = left_padded(prompts)
    threshold = None if strategy == "static" else 0.8
    params = {"window": 4, "window_threshold": 1.0} if strategy == "windowed" else None
    with attach(model, tiny_bundle(strategy, threshold, params=params)) as handle:
        if gate is not None:
            handle._state.guardrail.gate = gate
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **SETTINGS)
        assert handle.fired is not None
        fired = handle.fired.tolist()
    return out, fired


@pytest.mark.parametrize("strategy", ["dynamic", "windowed"])
def test_a_generation_where_nothing_fired_skips_its_steps(passes: list[int], strategy: str) -> None:
    model = tiny_llama()
    guarded, fired = _generate(model, QUIET_PROMPTS, strategy)
    assert fired == [False, False]
    assert passes == [12]
    ids, mask = left_padded(QUIET_PROMPTS)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, **SETTINGS)
    assert torch.equal(guarded, plain)


def test_a_generation_where_a_row_fired_computes_every_step(passes: list[int]) -> None:
    model = tiny_llama()
    guarded, fired = _generate(model, MIXED_PROMPTS, "dynamic")
    assert fired == [True, False]
    assert passes == EVERY_STEP
    ids, mask = left_padded(MIXED_PROMPTS)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, **SETTINGS)
    assert not torch.equal(guarded[0], plain[0])
    assert torch.equal(guarded[1], plain[1])


def test_static_clamping_computes_every_step(passes: list[int]) -> None:
    """``static`` clamps a step's own hits, so a prompt without hits does not settle its steps."""
    _, fired = _generate(tiny_llama(), [[QUIET] * 12], "static")
    assert fired == [False]
    assert passes == EVERY_STEP


def test_a_gate_that_does_not_say_it_keeps_the_decision_computes_every_step(
    passes: list[int],
) -> None:
    _, fired = _generate(tiny_llama(), QUIET_PROMPTS, "dynamic", gate=_UnsaidGate())
    assert fired == [False, False]
    assert passes == EVERY_STEP


def test_the_skip_is_decided_per_generation(passes: list[int]) -> None:
    """A quiet generation after a firing one on the same guardrail skips its steps, and a
    firing one after a quiet one does not."""
    model = tiny_llama()
    with attach(model, tiny_bundle()) as handle, torch.no_grad():
        for prompts in (MIXED_PROMPTS, QUIET_PROMPTS, MIXED_PROMPTS):
            ids, mask = left_padded(prompts)
            model.generate(input_ids=ids, attention_mask=mask, **SETTINGS)
        assert handle.fired is not None and handle.fired.tolist() == [True, False]
    assert passes == [*EVERY_STEP, 12, *EVERY_STEP]


def test_generation_under_torch_compile_is_guarded_as_without() -> None:
    """``torch.compile`` of the model's forward (dynamo; the eager backend, so no compiler is
    needed) with a static cache: the guardrail's hooks run as plain Python on every call (a
    graph break each), so two generations in a row give the tokens the uncompiled guarded model
    gives, and the row that fired differs from the plain model's."""
    model = tiny_llama()
    settings = {**SETTINGS, "cache_implementation": "static"}
    # quiet rows whose first row holds hits: transformers 4.x's static cache counts its length
    # from row 0's non-zero keys, and a row of token 0 (embedded as zero) has none
    quiet = [[QUIET] + [HIT] * 3, [HIT, QUIET] * 3]
    batches = [left_padded(MIXED_PROMPTS), left_padded(quiet)]
    with torch.no_grad(), attach(model, tiny_bundle()) as handle:
        eager = [model.generate(input_ids=i, attention_mask=m, **settings) for i, m in batches]
        torch._dynamo.reset()
        model.forward = torch.compile(model.forward, backend="eager")
        compiled, fired = [], []
        for ids, mask in batches:
            compiled.append(model.generate(input_ids=ids, attention_mask=mask, **settings))
            assert handle.fired is not None
            fired.append(handle.fired.tolist())
    del model.forward
    with torch.no_grad():
        plain = model.generate(input_ids=batches[0][0], attention_mask=batches[0][1], **settings)
    assert fired == [[True, False], [False, False]]
    assert all(torch.equal(c, e) for c, e in zip(compiled, eager, strict=True))
    assert not torch.equal(compiled[0][0], plain[0]) and torch.equal(compiled[0][1], plain[1])
