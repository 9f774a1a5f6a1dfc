"""One decision per call on the runtime alone (and so on the oldest transformers the runtime
supports), against each prompt run alone: threads sharing one guarded model, a pass inside a
guarded generate, a packed row under a block-diagonal mask, a deep copy, the binding check."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
from tiny_llama import HIT, QUIET, tiny_bundle, tiny_llama
from transformers import LogitsProcessor, LogitsProcessorList

from dsg_runtime.errors import UserError
from dsg_runtime.hf import GuardrailStateError, attach

FIRES = [HIT] * 8  # rate 7/8 > 0.8
QUIET_ROW = [QUIET, HIT, QUIET, QUIET, HIT, QUIET]  # rate 1/6


def ones(ids: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(ids)


def forward(model: Any, row: list[int]) -> torch.Tensor:
    ids = torch.tensor([row])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=ones(ids)).logits


def greedy(model: Any, row: list[int], **extra: Any) -> torch.Tensor:
    ids = torch.tensor([row])
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=ones(ids), max_new_tokens=3, do_sample=False, **extra
        )


@pytest.fixture(scope="module")
def alone() -> dict[str, Any]:
    model = tiny_llama()
    found: dict[str, Any] = {}
    for name, row in (("fires", FIRES), ("quiet", QUIET_ROW)):
        plain = forward(model, row)
        with attach(model, tiny_bundle()) as handle:
            found[name] = (forward(model, row), bool(handle.fired[0]), greedy(model, row))  # type: ignore[index]
        assert found[name][1] == (name == "fires")
        assert torch.equal(found[name][0], plain) == (name == "quiet")
    return found


class _Inside(LogitsProcessor):
    def __init__(self, model: Any) -> None:
        self.model = model
        self.logits: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            self.logits = forward(self.model, FIRES)
        return scores


def test_a_pass_inside_generate_is_decided_on_its_own_input(alone: dict[str, Any]) -> None:
    model = tiny_llama()
    inside = _Inside(model)
    with attach(model, tiny_bundle()) as handle:
        tokens = greedy(model, QUIET_ROW, logits_processor=LogitsProcessorList([inside]))
        assert handle.fired is not None and handle.fired.tolist() == [False]
    assert inside.logits is not None
    torch.testing.assert_close(inside.logits, alone["fires"][0])
    assert torch.equal(tokens, alone["quiet"][2])


def test_threads_each_get_their_own_decision(alone: dict[str, Any]) -> None:
    model = tiny_llama()
    rows = {"fires": FIRES, "quiet": QUIET_ROW}
    names = ["fires", "quiet"] * 3
    start = threading.Barrier(len(names))
    seen: list[tuple[str, Any]] = []

    def work(name: str, handle: Any) -> None:
        start.wait()
        for _ in range(3):
            try:
                logits = forward(model, rows[name])
                seen.append((name, (logits, bool(handle.fired[0]), greedy(model, rows[name]))))
            except Exception as exc:  # noqa: BLE001  (asserted below)
                seen.append((name, exc))

    with attach(model, tiny_bundle()) as handle:
        threads = [threading.Thread(target=work, args=(n, handle)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(seen) == len(names) * 3
    for name, value in seen:
        assert not isinstance(value, Exception), value
        logits, fired, tokens = value
        torch.testing.assert_close(logits, alone[name][0])
        assert fired == alone[name][1] and torch.equal(tokens, alone[name][2])


@pytest.mark.parametrize("kind", ["additive", "boolean"])
def test_a_packed_row_is_decided_per_sequence(alone: dict[str, Any], kind: str) -> None:
    """The tiny Llama runs SDPA, which reads a boolean mask as one (True: attend)."""
    import transformers

    if kind == "boolean" and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4 refuses a boolean 4-D mask itself")
    model = tiny_llama()
    rows = {"fires": FIRES, "quiet": QUIET_ROW}
    for first, second in (("fires", "quiet"), ("quiet", "fires")):
        a, b = rows[first], rows[second]
        ids = torch.tensor([a + b])
        n, cut = ids.shape[1], len(a)
        positions = torch.cat([torch.arange(cut), torch.arange(n - cut)])[None]
        segment = torch.arange(n) >= cut
        keep = torch.ones(n, n, dtype=torch.bool).tril() & (segment[:, None] == segment[None])
        mask = torch.zeros(1, 1, n, n).masked_fill(~keep, torch.finfo(torch.float32).min)
        if kind == "boolean":
            mask = keep[None, None]
        with attach(model, tiny_bundle()) as handle, torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            assert handle.fired is not None and handle.fired.tolist() == [True]
        torch.testing.assert_close(logits[:, :cut], alone[first][0])
        torch.testing.assert_close(logits[:, cut:], alone[second][0])


def test_a_row_with_no_attended_token_is_refused() -> None:
    model = tiny_llama()
    ids = torch.tensor([FIRES])
    with attach(model, tiny_bundle()), torch.no_grad():
        with pytest.raises(GuardrailStateError, match="attends no token"):
            model(input_ids=ids, attention_mask=torch.zeros_like(ids))


def test_a_deep_copy_is_guarded_on_its_own_weights(alone: dict[str, Any]) -> None:
    model = tiny_llama()
    handle = attach(model, tiny_bundle())
    twin = copy.deepcopy(model)
    handle.remove()
    torch.testing.assert_close(forward(twin, FIRES), alone["fires"][0])
    assert torch.equal(greedy(twin, FIRES), alone["fires"][2])
    with pytest.raises(UserError, match="already carries"):
        attach(twin, tiny_bundle())


def test_another_model_is_refused_unless_overridden() -> None:
    other = tiny_llama(seed=1)
    with pytest.raises(UserError, match="calibrated on another model"):
        attach(other, tiny_bundle())
    with attach(other, tiny_bundle(), allow_mismatch=True) as handle:
        assert handle.binding_note is not None
