"""One decision per call, against the single-prompt reference (each prompt alone, unpadded,
through dsg.hf): threads sharing one guarded model, a pass run inside a guarded generate,
packed rows under a block-diagonal mask, masks the guardrail cannot read, deep copies of a
guarded model and a second guardrail on one model. HAZARD fires alone, BENIGN does not."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from dsg.bundle import Bundle
from dsg.core.errors import UserError
from dsg.hf import GuardrailStateError, attach
from dsg_runtime.hf import guardrails_on

torch.set_num_threads(1)

HAZARD = "vex zyx quazz pox vexx zyq"
BENIGN = "a dear friend reads in the garden by the sea and the old town"
SHORT = "a tree"
ATOL = 1e-4
NEW = 4


def ids_of(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


def forward(model: Any, ids: torch.Tensor, **extra: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits


def greedy(model: Any, ids: torch.Tensor, **extra: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
            **extra,
        )


@pytest.fixture(scope="module")
def alone(world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each prompt alone through the guarded model: its decision, logits and greedy tokens, and
    its unguarded logits."""
    model, tokenizer = world["model"], world["tokenizer"]
    found: dict[str, dict[str, Any]] = {}
    for text in (HAZARD, BENIGN, SHORT):
        ids = ids_of(tokenizer, text)
        plain = forward(model, ids)
        with attach(model, Bundle.load(world["bundle_dir"])) as handle:
            logits = forward(model, ids)
            fired = bool(handle.fired[0])
            tokens = greedy(model, ids)
        found[text] = {"ids": ids, "fired": fired, "logits": logits, "tokens": tokens}
        found[text]["plain"] = plain
    assert found[HAZARD]["fired"] and not found[BENIGN]["fired"] and not found[SHORT]["fired"]
    assert not torch.allclose(found[HAZARD]["logits"], found[HAZARD]["plain"], atol=ATOL)
    torch.testing.assert_close(found[BENIGN]["logits"], found[BENIGN]["plain"])
    return found


# ---------------------------------------------------------------------------- item 1: calls


class _ForwardInside(LogitsProcessor):
    """A logits processor that runs a forward pass of ``ids`` on the model at its first call."""

    def __init__(self, model: Any, handle: Any, ids: torch.Tensor) -> None:
        self.model, self.handle, self.ids = model, handle, ids
        self.seen: dict[str, Any] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.seen:
            self.seen["logits"] = forward(self.model, self.ids)
            self.seen["fired"] = bool(self.handle.fired[0])
        return scores


@pytest.mark.parametrize("outer", [SHORT, BENIGN])
def test_a_pass_inside_generate_is_decided_on_its_own_input(
    world: dict[str, Any], alone: Any, outer: str
) -> None:
    model = world["model"]
    with attach(model, Bundle.load(world["bundle_dir"])) as handle:
        inside = _ForwardInside(model, handle, alone[HAZARD]["ids"])
        tokens = greedy(model, alone[outer]["ids"], logits_processor=LogitsProcessorList([inside]))
        outer_fired = bool(handle.fired[0])
    assert inside.seen["fired"] is True
    torch.testing.assert_close(inside.seen["logits"], alone[HAZARD]["logits"], atol=ATOL, rtol=0)
    assert torch.equal(tokens, alone[outer]["tokens"])  # the generation itself is untouched
    assert outer_fired is False  # fired reports the generation's prompt, not the inner pass


def test_threads_sharing_a_guarded_model_each_get_their_own_decision(
    world: dict[str, Any], alone: Any
) -> None:
    model = world["model"]
    texts = [HAZARD, BENIGN, HAZARD, SHORT, HAZARD, BENIGN]
    rounds = 4
    start = threading.Barrier(len(texts))
    results: list[tuple[str, str, Any]] = []
    lock = threading.Lock()

    def work(text: str, handle: Any) -> None:
        start.wait()
        for n in range(rounds):
            try:
                if n % 2:
                    found: Any = ("tokens", greedy(model, alone[text]["ids"]))
                else:
                    logits = forward(model, alone[text]["ids"])
                    found = ("logits", (logits, bool(handle.fired[0])))
            except Exception as exc:  # noqa: BLE001  (reported below, with the thread's prompt)
                found = ("error", exc)
            with lock:
                results.append((text, *found))

    with attach(model, Bundle.load(world["bundle_dir"])) as handle:
        threads = [threading.Thread(target=work, args=(t, handle)) for t in texts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == len(texts) * rounds
    for text, kind, value in results:
        assert kind != "error", value
        if kind == "tokens":
            assert torch.equal(value, alone[text]["tokens"]), text
        else:
            logits, fired = value
            assert fired == alone[text]["fired"], text
            torch.testing.assert_close(logits, alone[text]["logits"], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------- item 2: masks


def packed(alone: Any, first: str, second: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One row holding ``first`` then ``second``, its restarting position ids, and where the
    second starts."""
    a, b = alone[first]["ids"], alone[second]["ids"]
    ids = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
    return ids, positions, a.shape[1]


def block_diagonal(length: int, cut: int, window: int | None = None) -> torch.Tensor:
    """Bool ``[1, 1, T, T]``: causal within ``[0, cut)`` and within ``[cut, T)`` (each query
    seeing at most ``window`` keys, if given)."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if window is not None:
        causal &= torch.ones(length, length, dtype=torch.bool).triu(-(window - 1))
    segment = torch.arange(length) >= cut
    return (causal & (segment[:, None] == segment[None, :]))[None, None]


def additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("order", [(HAZARD, BENIGN), (BENIGN, HAZARD)])
def test_a_packed_row_is_decided_per_sequence(
    world: dict[str, Any], alone: Any, order: tuple[str, str]
) -> None:
    """The tiny Gemma-2 runs eager attention, with sliding-window layers: the packed row gets
    the dict of masks transformers itself builds, each block-diagonal."""
    model = world["model"]
    ids, positions, cut = packed(alone, *order)
    n = ids.shape[1]
    window = model.config.sliding_window
    masks = {
        "full_attention": additive(block_diagonal(n, cut)),
        "sliding_attention": additive(block_diagonal(n, cut, window)),
    }
    with attach(model, Bundle.load(world["bundle_dir"])) as handle:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=masks, position_ids=positions).logits
        assert handle.fired.tolist() == [True]  # one of its sequences fired
    first, second = order
    torch.testing.assert_close(logits[:, :cut], alone[first]["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[:, cut:], alone[second]["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "what",
    [
        "not causal",
        "skips its own sequence",
        "attends others not itself",
        "bias",
        "heads differ",
        "boolean under eager attention",
    ],
)
def test_a_4d_mask_of_another_structure_is_refused(
    world: dict[str, Any], alone: Any, what: str
) -> None:
    model = world["model"]
    ids, positions, cut = packed(alone, HAZARD, BENIGN)
    n = ids.shape[1]
    mask = block_diagonal(n, cut)
    if what == "not causal":
        mask = torch.ones_like(mask)
    elif what == "skips its own sequence":
        mask = mask.clone()
        mask[0, 0, cut + 2, cut + 1] = False
    elif what == "attends others not itself":
        mask = mask.clone()
        mask[0, 0, cut + 2, cut + 2] = False
    elif what == "bias":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        mask[0, 0, 1, 0] = -3.0
    elif what == "heads differ":
        heads = model.config.num_attention_heads
        causal = torch.ones_like(mask).tril()
        mask = torch.cat([mask, *[causal] * (heads - 1)], dim=1)
    if what != "boolean under eager attention" and mask.dtype == torch.bool:
        mask = additive(mask)
    with attach(model, Bundle.load(world["bundle_dir"])):
        with pytest.raises(GuardrailStateError), torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=positions)


@pytest.mark.parametrize("call", ["forward", "generate"])
def test_a_row_with_no_attended_token_is_refused(
    world: dict[str, Any], alone: Any, call: str
) -> None:
    model = world["model"]
    ids = alone[HAZARD]["ids"]
    zeros = torch.zeros_like(ids)
    with attach(model, Bundle.load(world["bundle_dir"])):
        with pytest.raises(GuardrailStateError, match="attends no token"), torch.no_grad():
            if call == "forward":
                model(input_ids=ids, attention_mask=zeros)
            else:
                model.generate(input_ids=ids, attention_mask=zeros, max_new_tokens=2)


def test_a_decode_step_whose_new_position_is_masked_out_is_refused(
    world: dict[str, Any], alone: Any
) -> None:
    model = world["model"]
    ids = alone[HAZARD]["ids"]
    with attach(model, Bundle.load(world["bundle_dir"])), torch.no_grad():
        prefill = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        step = prefill.logits[:, -1:].argmax(-1)
        mask = torch.cat([torch.ones_like(ids), torch.zeros_like(step)], dim=1)
        with pytest.raises(GuardrailStateError, match="masks out a position after the prompt"):
            model(input_ids=step, attention_mask=mask, past_key_values=prefill.past_key_values)


def test_without_a_mask_pad_tokens_are_refused(world: dict[str, Any], alone: Any) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    enc = tokenizer([HAZARD, SHORT], return_tensors="pt", padding=True)
    assert bool((enc["input_ids"] == tokenizer.pad_token_id).any())
    with attach(model, Bundle.load(world["bundle_dir"])) as handle:
        with pytest.raises(GuardrailStateError, match="pad token"), torch.no_grad():
            model(input_ids=enc["input_ids"])
        with torch.no_grad():  # with its mask, each row is decided as alone
            model(**enc)
        assert handle.fired.tolist() == [True, False]
        with torch.no_grad():  # no pad token, no mask: every position counts
            model(input_ids=alone[HAZARD]["ids"])
        assert handle.fired.tolist() == [True]


def test_without_a_mask_restarting_positions_are_refused(world: dict[str, Any], alone: Any) -> None:
    model = world["model"]
    ids, positions, _ = packed(alone, HAZARD, BENIGN)
    with attach(model, Bundle.load(world["bundle_dir"])):
        with pytest.raises(GuardrailStateError, match="position_ids restart"), torch.no_grad():
            model(input_ids=ids, position_ids=positions, use_cache=False)


# ---------------------------------------------------------------------------- item 3: copies


def test_a_deep_copy_is_guarded_on_its_own_weights(world: dict[str, Any], alone: Any) -> None:
    model = world["model"]
    handle = attach(model, Bundle.load(world["bundle_dir"]))
    try:
        twin = copy.deepcopy(model)
    finally:
        handle.remove()
    hazard = alone[HAZARD]["ids"]
    assert torch.equal(greedy(twin, hazard), alone[HAZARD]["tokens"])  # guarded, alone
    torch.testing.assert_close(forward(twin, hazard), alone[HAZARD]["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(forward(model, hazard), alone[HAZARD]["plain"])  # original: off
    with torch.no_grad():
        twin.lm_head.weight.zero_()  # the copy's generate runs the copy's weights
    assert bool((greedy(twin, hazard)[0, hazard.shape[1] :] == 0).all())


def test_a_second_guardrail_needs_stack(world: dict[str, Any], alone: Any) -> None:
    model = world["model"]
    bundle = Bundle.load(world["bundle_dir"])
    hazard = alone[HAZARD]["ids"]
    with attach(model, bundle):
        with pytest.raises(UserError, match="already carries a dsg guardrail"):
            attach(model, bundle)
        with attach(model, bundle, stack=True):
            assert len(guardrails_on(model)) == 2
            forward(model, hazard)
        once = forward(model, hazard)
    torch.testing.assert_close(once, alone[HAZARD]["logits"], atol=ATOL, rtol=0)
    assert guardrails_on(model) == []
    with attach(model, bundle):  # removed: one guardrail may be attached again
        pass
