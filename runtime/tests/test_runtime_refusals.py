"""Every way dsg_runtime.hf refuses a call, on the tiny Llama: each refusal checked by its whole
line, each condition that leads to it on its own, and the calls next to them that must pass
(a guardrail that fails closed must still say exactly why)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from tiny_llama import HIDDEN, HIT, QUIET, left_padded, tiny_bundle, tiny_llama
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList

import dsg_runtime.hf
from dsg_runtime.binding import record_binding
from dsg_runtime.errors import UserError
from dsg_runtime.hf import GuardrailStateError, _Decision, _refuse_packed, attach, guardrails_on
from dsg_runtime.hf_masks import PromptView

FIRES = [HIT] * 8  # rate 7/8 > 0.8
QUIET_ROW = [QUIET, HIT, QUIET, QUIET, HIT, QUIET]  # rate 1/6
GREEDY = {"max_new_tokens": 3, "do_sample": False}
chunked_prefill = pytest.mark.skipif(
    not hasattr(GenerationConfig(), "prefill_chunk_size"), reason="no chunked prefill"
)


def row(tokens: list[int], embedded: bool = False) -> dict[str, torch.Tensor]:
    """One row of ``tokens`` with its mask, as ids or as the tiny Llama's embeddings."""
    ids = torch.tensor([tokens])
    if embedded:
        return {"inputs_embeds": _embed(ids), "attention_mask": torch.ones_like(ids)}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _embed(ids: torch.Tensor) -> torch.Tensor:
    return tiny_llama().model.embed_tokens(ids).detach()


def step(cache: Any, past: int, token: int = HIT) -> dict[str, Any]:
    """One new token after ``past`` positions held by ``cache``."""
    return {
        "input_ids": torch.tensor([[token]]),
        "attention_mask": torch.ones(1, past + 1, dtype=torch.long),
        "past_key_values": cache,
    }


def filled(model: Any, tokens: list[int]) -> Any:
    """The KV cache of one pass over ``tokens`` (a cache object: transformers 4 would return a
    legacy tuple, which the guardrail cannot follow by identity)."""
    with torch.no_grad():
        return model(**row(tokens), past_key_values=DynamicCache()).past_key_values


def refusal(error: Any, call: Any) -> str:
    with pytest.raises(error) as raised, torch.no_grad():
        call()
    return str(raised.value)


def grow(cache: Any, positions: int) -> None:
    """Add positions to every layer of ``cache`` behind the guardrail's back."""
    for layer in range(len(cache)):
        kv = torch.zeros(1, 2, positions, HIDDEN // 2)
        cache.update(kv, kv, layer)


# ------------------------------------------------------------------ where a pass comes from


def test_the_guarded_layer_run_outside_its_decoder_is_refused() -> None:
    model = tiny_llama()
    hidden = torch.zeros(1, 3, HIDDEN)
    with attach(model, tiny_bundle()):
        rotary = model.model.rotary_emb(hidden, torch.arange(3)[None])
        line = refusal(
            GuardrailStateError, lambda: model.model.layers[0](hidden, position_embeddings=rotary)
        )
    assert line == (
        "the guarded layer ran outside a forward pass of the decoder the guardrail was attached "
        "to, so its attention mask and cache are unknown"
    )


def test_a_cache_position_that_contradicts_the_mask_is_refused() -> None:
    """A ``cache_position`` keyword (transformers 4.x passes one on every call) is one more
    reading of the positions before the call; here it says 3 where the mask says 0."""
    model = tiny_llama()
    with attach(model, tiny_bundle()):
        call = {**row([HIT, HIT]), "cache_position": torch.tensor([3, 4])}
        line = refusal(GuardrailStateError, lambda: model(**call))
    assert line == (
        "the guardrail cannot tell whether this forward pass starts or continues a sequence: "
        "attention mask says 0 positions came before, cache position says 3 positions came "
        "before"
    )


def test_a_decoder_called_with_its_ids_by_position_reads_them() -> None:
    """The pad id (0) in ids passed by position, with no mask: refused as by keyword."""
    model = tiny_llama()
    with attach(model, tiny_bundle()):
        line = refusal(GuardrailStateError, lambda: model.model(torch.tensor([[HIT, QUIET]])))
    assert line == (
        "input_ids hold the pad token (0) and no attention_mask was passed, so the guardrail "
        "cannot tell padding from text; pass the attention_mask"
    )


# ------------------------------------------------------------------ continuations outside generate


def test_more_than_one_new_position_outside_generate_is_refused() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()):
        cache = filled(model, FIRES)
        call = {**step(cache, 8), "input_ids": torch.tensor([[HIT, HIT]])}
        call["attention_mask"] = torch.ones(1, 10, dtype=torch.long)
        line = refusal(GuardrailStateError, lambda: model(**call))
    assert line == (
        "a forward pass outside generate adds 2 positions to a KV cache: the guardrail cannot "
        "tell more prompt from generated tokens; use generate, or pass the whole prompt in one "
        "pass and then one token a step"
    )


def test_a_cache_filled_before_the_guardrail_is_refused() -> None:
    model = tiny_llama()
    cache = filled(model, FIRES)
    with attach(model, tiny_bundle()):
        line = refusal(GuardrailStateError, lambda: model(**step(cache, 8)))
    assert line == (
        "the guardrail saw a continuation step (8 positions already cached) for rows whose "
        "prompt it did not decide; attach it before the prompt is processed"
    )


@pytest.mark.parametrize("guarded_cache", [True, False], ids=["another-cache", "no-cache"])
def test_a_cache_the_guardrail_did_not_see_filled_is_refused(guarded_cache: bool) -> None:
    """The rows it decided went to another cache, or to none (``use_cache=False``); a cache of
    the same length filled unguarded is not theirs."""
    model = tiny_llama()
    unguarded = filled(model, QUIET_ROW + [HIT, HIT])
    with attach(model, tiny_bundle()), torch.no_grad():
        kept = model(**row(FIRES), use_cache=guarded_cache)  # its cache stays alive
        line = refusal(GuardrailStateError, lambda: model(**step(unguarded, 8)))
        assert (kept.past_key_values is None) != guarded_cache
    assert line == (
        "the guardrail was given a KV cache (8 positions) that it did not see filled: its "
        "positions may have run unguarded; generate from the whole prompt instead"
    )


def test_positions_added_behind_the_guardrails_back_are_refused() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()):
        cache = filled(model, FIRES)
        model(**step(cache, 8))  # followed: 9 positions
        grow(cache, 1)
        line = refusal(GuardrailStateError, lambda: model(**step(cache, 10)))
    assert line == (
        "the guardrail followed these rows for 9 positions but the cache holds 10: positions "
        "ran unguarded; attach it before the prompt is processed"
    )


def test_positions_added_after_a_prefix_pass_are_refused() -> None:
    model = tiny_llama()
    decide = torch.tensor([[True] * 5 + [False] * 3])
    with attach(model, tiny_bundle()) as handle:
        with handle.decided_on_prefix(decide, torch.ones_like(decide)):
            cache = filled(model, FIRES)
        grow(cache, 1)
        line = refusal(GuardrailStateError, lambda: model(**step(cache, 9)))
    assert line == (
        "the guardrail followed these rows for 8 positions but the cache holds 9: positions "
        "ran unguarded; attach it before the prompt is processed"
    )


def packed_call() -> dict[str, Any]:
    """FIRES and QUIET_ROW in one row under a block-diagonal additive mask."""
    ids = torch.tensor([FIRES + QUIET_ROW])
    n, cut = ids.shape[1], len(FIRES)
    segment = torch.arange(n) >= cut
    keep = torch.ones(n, n, dtype=torch.bool).tril() & (segment[:, None] == segment[None])
    mask = torch.zeros(1, 1, n, n).masked_fill(~keep, torch.finfo(torch.float32).min)
    positions = torch.cat([torch.arange(cut), torch.arange(n - cut)])[None]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def test_a_boolean_4d_mask_on_a_step_under_eager_attention_is_refused() -> None:
    """Eager attention adds the mask to its scores: a boolean one masks nothing."""
    model = tiny_llama()
    model.config._attn_implementation = "eager"
    with attach(model, tiny_bundle()):
        cache = filled(model, FIRES)
        call = {**step(cache, 8), "attention_mask": torch.ones(1, 1, 1, 9, dtype=torch.bool)}
        line = refusal(GuardrailStateError, lambda: model(**call))
    assert line == (
        "a boolean 4-D attention mask under eager attention is added to the scores, not "
        "applied as a mask; pass an additive float mask (0 and -inf)"
    )


def test_a_packed_row_reports_its_highest_rate_and_cannot_be_continued() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()) as handle, torch.no_grad():
        cache = model(**packed_call(), past_key_values=DynamicCache()).past_key_values
        assert handle.fired is not None and handle.fired.tolist() == [True]
        assert handle.rates is not None and handle.rates.tolist() == pytest.approx([7 / 8])
        line = refusal(GuardrailStateError, lambda: model(**step(cache, 14)))
    assert line == (
        "a continuation of rows that packed several sequences: each was decided alone, and the "
        "guardrail cannot tell which one the new positions extend"
    )


# ------------------------------------------------------------------ decided_on_prefix


@pytest.mark.parametrize(
    ("decide", "apply", "shape"),
    [((1, 7), (1, 8), (1, 7)), ((1, 8), (1, 7), (1, 8))],
    ids=["decide-mask", "apply-mask"],
)
def test_prefix_masks_of_another_shape_are_refused(
    decide: tuple[int, int], apply: tuple[int, int], shape: tuple[int, int]
) -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()) as handle:
        masks = (torch.ones(decide, dtype=torch.bool), torch.ones(apply, dtype=torch.bool))
        with handle.decided_on_prefix(*masks):
            line = refusal(GuardrailStateError, lambda: model(**row(FIRES)))
    assert line == (
        f"the guardrail was given prompt masks of shape {shape} for a call of shape (1, 8) after "
        "0 cached positions"
    )


def test_a_prefix_pass_that_continues_a_cache_is_refused() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()) as handle:
        cache = filled(model, FIRES)
        one = torch.ones(1, 1, dtype=torch.bool)
        with handle.decided_on_prefix(one, one):
            line = refusal(GuardrailStateError, lambda: model(**step(cache, 8)))
    assert line == (
        "the guardrail was given prompt masks of shape (1, 1) for a call of shape (1, 1) after "
        "8 cached positions"
    )


# ------------------------------------------------------------------ generate


def test_a_decision_follows_its_prompt_into_repeated_rows() -> None:
    decision = _Decision(
        torch.tensor([True, False]), torch.tensor([0.9, 0.1]), torch.tensor([[1, 0], [0, 1]])
    )
    assert decision.rows(2) is decision
    repeated = decision.rows(4)
    assert repeated.fired.tolist() == [True, True, False, False]
    assert repeated.rates.tolist() == pytest.approx([0.9, 0.9, 0.1, 0.1])
    assert repeated.countable.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    line = refusal(GuardrailStateError, lambda: decision.rows(3))
    assert line == "the guardrail decided 2 prompts but a forward pass of generate has 3 rows"


def test_the_guarded_model_as_its_own_assistant_is_refused() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()):
        call = {**row(FIRES), **GREEDY, "assistant_model": model}
        line = refusal(GuardrailStateError, lambda: model.generate(**call))
    assert line == (
        "generate was called again while a generation of this guarded model was running (the "
        "model is its own assistant?); use an unguarded assistant model"
    )


def test_a_prompt_passed_by_position_is_generated_from() -> None:
    model = tiny_llama()
    call = row(FIRES)
    with attach(model, tiny_bundle()), torch.no_grad():
        by_keyword = model.generate(**call, **GREEDY)
        by_position = model.generate(
            call["input_ids"], attention_mask=call["attention_mask"], **GREEDY
        )
    assert torch.equal(by_keyword, by_position)


def test_a_generate_replaced_by_other_code_is_refused() -> None:
    model = tiny_llama()
    model.generate = lambda *args, **kwargs: None
    line = refusal(UserError, lambda: attach(model, tiny_bundle()))
    assert line == (
        "the model's generate was replaced by other code (custom_generate); the guardrail "
        "supports transformers' own generate only"
    )


class _OwnPromptAndStep(LogitsProcessor):
    """Runs a prompt of its own, shorter than generate's, and one step on its cache."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.logits: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            cache = filled(self.model, FIRES[:4])
            self.logits = self.model(**step(cache, 4)).logits
        return scores


def test_a_continuation_run_inside_generate_on_its_own_cache_is_not_generates() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()), torch.no_grad():
        cache = filled(model, FIRES[:4])
        alone = model(**step(cache, 4)).logits
        inside = _OwnPromptAndStep(model)
        model.generate(
            **row(QUIET_ROW + QUIET_ROW), **GREEDY, logits_processor=LogitsProcessorList([inside])
        )
    assert inside.logits is not None and torch.equal(inside.logits, alone)


@chunked_prefill
def test_a_prompt_run_in_pieces_the_guardrail_was_not_told_of_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if a transformers chunked the prefill without ``prefill_chunk_size``."""
    model = tiny_llama()
    try:
        model.generate(**row(FIRES), **GREEDY, prefill_chunk_size=3)
    except ValueError as exc:  # transformers 5.0.0 chunks no prefill without a cache given
        pytest.skip(f"chunked prefill fails without the guardrail here: {exc}")
    told = dsg_runtime.hf.generation_plan
    monkeypatch.setattr(
        dsg_runtime.hf,
        "generation_plan",
        lambda *call: dataclasses.replace(told(*call), chunked=False),
    )
    with attach(model, tiny_bundle()):
        line = refusal(
            GuardrailStateError,
            lambda: model.generate(**row(FIRES), **GREEDY, prefill_chunk_size=3),
        )
    assert line == (
        "generate ran positions 0 to 3 of the prompt's 8 alone and the guardrail was not told "
        "the prompt is processed in pieces"
    )


@chunked_prefill
def test_a_chunked_prompt_whose_decision_pass_misses_the_layer_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pass that decides a chunked prompt first must reach the guarded layer; it keeps
    no cache (it stops there). ``fired`` then reports no prompt: not the one before."""
    model = tiny_llama()
    seen: list[dict[str, Any]] = []
    with attach(model, tiny_bundle()) as handle:
        with torch.no_grad():
            model(**row(FIRES))
        monkeypatch.setattr(model, "forward", lambda **kwargs: seen.append(kwargs), raising=False)
        line = refusal(
            GuardrailStateError,
            lambda: model.generate(**row(FIRES), **GREEDY, prefill_chunk_size=3),
        )
        assert handle.fired is None and handle.rates is None
    assert line == "the guarded layer did not run on the prompt"
    assert [call["use_cache"] for call in seen] == [False]


def test_a_drafted_pass_whose_prompt_attends_nothing_is_refused() -> None:
    """Assisted generation runs the prompt and the drafts in one pass: the drafts are
    attended, the prompt (all-zero mask) is not."""
    model, assistant = tiny_llama(), tiny_llama(seed=3)
    assistant.generation_config.num_assistant_tokens = 4
    assistant.generation_config.num_assistant_tokens_schedule = "constant"
    ids = torch.tensor([FIRES])
    call = {"input_ids": ids, "attention_mask": torch.zeros_like(ids), **GREEDY}
    with attach(model, tiny_bundle()):
        line = refusal(
            GuardrailStateError, lambda: model.generate(**call, assistant_model=assistant)
        )
    assert line == "a prompt of generate attends none of its tokens"


class _OwnPrompt(LogitsProcessor):
    """Runs one prompt of its own, as ids or as embeddings."""

    def __init__(self, model: Any, tokens: list[int], embedded: bool = False) -> None:
        self.model, self.tokens, self.embedded = model, tokens, embedded
        self.logits: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            self.logits = self.model(**row(self.tokens, self.embedded)).logits
        return scores


FIRES_LATE = [HIT, QUIET] + [HIT] * 10
"""Fires (rate 10/12: the first position is never a hit); its first two positions do not."""


@pytest.mark.parametrize("embedded", [False, True], ids=["ids", "embeddings"])
def test_a_pass_of_another_prompt_inside_generate_is_decided_on_its_own(embedded: bool) -> None:
    """Generate's prompt is two positions, the pass's own prompt (FIRES_LATE) starts
    otherwise: had the pass been taken for generate's own, it would be decided on its first
    two positions, which do not fire."""
    model = tiny_llama()
    prompt = row([QUIET, QUIET], embedded)
    with attach(model, tiny_bundle()) as handle, torch.no_grad():
        alone = model(**row(FIRES_LATE, embedded)).logits
        assert handle.fired is not None and handle.fired.tolist() == [True]
        inside = _OwnPrompt(model, FIRES_LATE, embedded)
        processors = LogitsProcessorList([inside])
        model.generate(**prompt, **GREEDY, logits_processor=processors)
    assert inside.logits is not None and torch.equal(inside.logits, alone)


@pytest.mark.parametrize("embedded", [False, True], ids=["ids", "embeddings"])
def test_a_pass_of_the_other_input_kind_inside_generate_is_refused(embedded: bool) -> None:
    """Embeddings cannot be compared with generate's prompt ids, nor ids with its prompt
    embeddings: the pass might or might not continue generate's prompt."""
    model = tiny_llama()
    inside = _OwnPrompt(model, FIRES_LATE, embedded=not embedded)
    processors = LogitsProcessorList([inside])
    prompt = row([QUIET, QUIET], embedded)
    with attach(model, tiny_bundle()):
        line = refusal(
            GuardrailStateError,
            lambda: model.generate(**prompt, **GREEDY, logits_processor=processors),
        )
    kind = "inputs_embeds" if embedded else "input_ids"
    assert line == (
        f"a pass without {kind} ran inside a generate that started from {kind}: the guardrail "
        "cannot tell whether it continues generate's prompt; run it outside generate"
    )


def test_a_pass_of_another_batch_inside_generate_is_decided_on_its_own() -> None:
    """One row inside a generation of two: not generate's, whatever its positions."""
    model = tiny_llama()
    ids = torch.tensor([[HIT, QUIET], [QUIET, QUIET]])
    with attach(model, tiny_bundle()) as handle, torch.no_grad():
        alone = model(**row(FIRES_LATE)).logits
        assert handle.fired is not None and handle.fired.tolist() == [True]
        inside = _OwnPrompt(model, FIRES_LATE)
        processors = LogitsProcessorList([inside])
        model.generate(
            ids, attention_mask=torch.ones_like(ids), **GREEDY, logits_processor=processors
        )
    assert inside.logits is not None and torch.equal(inside.logits, alone)


# ------------------------------------------------------------------ attach and remove


def test_a_model_of_another_width_is_refused() -> None:
    model = tiny_llama()
    model.config.hidden_size = 8
    line = refusal(UserError, lambda: attach(model, tiny_bundle()))
    assert line == (
        "the bundle reads vectors of size 16 but the model's hidden size is 8; use the bundle "
        "with the model its SAE was trained on"
    )


def test_a_layer_one_past_the_last_is_refused() -> None:
    bundle = dataclasses.replace(tiny_bundle(), hook_name="blocks.2.hook_resid_post")
    line = refusal(UserError, lambda: attach(tiny_llama(), bundle))
    assert line == "the bundle hooks layer 2 but the model has 2 layers"


def test_a_second_guardrail_needs_stack() -> None:
    model = tiny_llama()
    with attach(model, tiny_bundle()):
        line = refusal(UserError, lambda: attach(model, tiny_bundle()))
    assert line == (
        "the model already carries a dsg guardrail; remove it first (handle.remove()), or pass "
        "stack=True to apply both, one after the other"
    )


def test_other_hooks_on_the_decoder_are_not_guardrails() -> None:
    class Other:
        def hook(self, module: Any, args: Any) -> None:
            return None

    model = tiny_llama()
    model.model.register_forward_pre_hook(lambda module, args: None)
    model.model.register_forward_pre_hook(Other().hook)
    with attach(model, tiny_bundle()) as handle:
        assert guardrails_on(model) == [handle]
    assert guardrails_on(model) == []


def contrastive(model: Any) -> None:
    model.generate(**row(FIRES), max_new_tokens=2, penalty_alpha=0.6, top_k=4)


def generate_guard(model: Any) -> Any:
    return getattr(model.__dict__.get("generate"), "__dsg_guardrail__", None)


def test_removing_the_top_guardrail_leaves_the_one_below_guarding_generate() -> None:
    model = tiny_llama()
    below = attach(model, tiny_bundle())
    middle = attach(model, tiny_bundle(), stack=True)
    top = attach(model, tiny_bundle(), stack=True)
    middle.remove()
    assert generate_guard(model) is top
    top.remove()
    assert generate_guard(model) is below
    refusal(GuardrailStateError, lambda: contrastive(model))
    below.remove()
    below.remove()  # removing twice is harmless
    assert "generate" not in model.__dict__ and guardrails_on(model) == []


def test_a_removed_guardrail_under_another_passes_generate_through() -> None:
    """The lower wrapper stays in the chain; a prompt given by position and the options
    still reach transformers' generate through it."""
    model = tiny_llama()
    call = row(FIRES)
    with attach(model, tiny_bundle()), torch.no_grad():
        alone = model.generate(**call, **GREEDY)
    below = attach(model, tiny_bundle())
    with attach(model, tiny_bundle(), stack=True), torch.no_grad():
        below.remove()
        through = model.generate(call["input_ids"], attention_mask=call["attention_mask"], **GREEDY)
    assert torch.equal(through, alone)


def layer_input_bundle() -> Any:
    """The tiny bundle read at the input of layer 1: the same vector as layer 0's output."""
    hook = "blocks.1.hook_resid_pre"
    return dataclasses.replace(
        tiny_bundle(), hook_name=hook, binding=record_binding(tiny_llama(), hook)
    )


def test_a_layer_given_its_input_by_keyword_is_guarded_alike() -> None:
    """A model that calls its decoder layers with ``hidden_states=`` (simulated by a
    pre-hook, run before the guardrail's, that moves the input there)."""
    model = tiny_llama()
    with attach(model, layer_input_bundle()) as handle, torch.no_grad():
        by_position = model(**row(FIRES)).logits
        assert handle.fired is not None and handle.fired.tolist() == [True]
    model.model.layers[1].register_forward_pre_hook(
        lambda module, args, kwargs: ((), {**kwargs, "hidden_states": args[0]}), with_kwargs=True
    )
    with attach(model, layer_input_bundle()) as handle, torch.no_grad():
        by_keyword = model(**row(FIRES)).logits
        assert handle.fired is not None and handle.fired.tolist() == [True]
    assert torch.equal(by_keyword, by_position)


def test_a_layer_given_its_mask_by_position_keeps_it() -> None:
    """A model that passes a decoder layer more than its input by position (simulated by a
    pre-hook, run before the guardrail's, that moves the attention mask there): the padded row
    still attends only its tokens."""
    model = tiny_llama()
    ids, mask = left_padded([FIRES, QUIET_ROW])
    with attach(model, layer_input_bundle()), torch.no_grad():
        by_keyword = model(input_ids=ids, attention_mask=mask).logits

    def mask_by_position(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        rest = {k: v for k, v in kwargs.items() if k != "attention_mask"}
        return (args[0], kwargs["attention_mask"]), rest

    model.model.layers[1].register_forward_pre_hook(mask_by_position, with_kwargs=True)
    with attach(model, layer_input_bundle()), torch.no_grad():
        by_position = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(by_position, by_keyword)


def test_a_packed_refusal_names_where_it_happened() -> None:
    """transformers 5's generate takes 2-D masks only, so no pass of generate is packed
    today; the refusal a packed one would meet."""
    attended = torch.ones(1, 4, dtype=torch.bool)
    view = PromptView(attended, segments=torch.tensor([[0, 0, 1, 1]]))
    line = refusal(GuardrailStateError, lambda: _refuse_packed(view, "generate"))
    assert line == (
        "generate with rows that pack several sequences (a block-diagonal 4-D mask): pass each "
        "sequence as a row of its own"
    )
    _refuse_packed(PromptView(attended), "generate")  # one sequence a row: nothing to refuse


# ------------------------------------------------------------------ pad ids, copies, records


PAD_REFUSAL = (
    "input_ids hold the pad token (5) and no attention_mask was passed, so the guardrail cannot "
    "tell padding from text; pass the attention_mask"
)


@pytest.mark.parametrize("named_by", ["config", "generation_config"])
def test_the_pad_id_either_config_names_is_refused_without_a_mask(named_by: str) -> None:
    model = tiny_llama()
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    getattr(model, named_by).pad_token_id = 5
    with attach(model, tiny_bundle()):
        line = refusal(GuardrailStateError, lambda: model(input_ids=torch.tensor([[HIT, 5]])))
    assert line == PAD_REFUSAL


def test_no_pad_id_named_refuses_nothing_without_a_mask() -> None:
    model = tiny_llama()
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    with attach(model, tiny_bundle()) as handle, torch.no_grad():
        model(input_ids=torch.tensor([[HIT, 5]]))
        assert handle.fired is not None


def test_a_deep_copy_keeps_the_bundle_note_and_pad_ids() -> None:
    model = tiny_llama(seed=1)
    model.config.pad_token_id = 5
    model.generation_config.pad_token_id = None
    handle = attach(model, tiny_bundle(), allow_mismatch=True)
    twin = copy.deepcopy(model)
    handle.remove()
    (copied,) = guardrails_on(twin)
    assert copied.bundle is handle.bundle and copied.binding_note == handle.binding_note
    assert copied.binding_note is not None
    line = refusal(GuardrailStateError, lambda: twin(input_ids=torch.tensor([[HIT, 5]])))
    assert line == PAD_REFUSAL


def test_a_thread_keeps_no_record_its_cache_is_gone() -> None:
    """Records of rows whose cache was dropped can continue nothing: they are let go."""
    model = tiny_llama()
    with attach(model, tiny_bundle()) as handle, torch.no_grad():
        for _ in range(3):
            model(**row(FIRES), use_cache=False)
        assert len(handle._state.records) == 1


def test_a_bfloat16_model_is_clamped_in_float32_and_goes_on_in_bfloat16() -> None:
    model = tiny_llama().to(torch.bfloat16)
    next_layer_reads: list[torch.dtype] = []
    model.model.layers[1].register_forward_pre_hook(
        lambda module, args: next_layer_reads.append(args[0].dtype)
    )
    with torch.no_grad():
        plain = model(**row(QUIET_ROW)).logits
        with attach(model, tiny_bundle()) as handle:
            quiet = model(**row(QUIET_ROW)).logits
            model(**row(FIRES))
            assert handle.fired is not None and handle.fired.tolist() == [True]
    assert next_layer_reads == [torch.bfloat16] * 3
    assert torch.equal(quiet, plain)  # a row that did not fire is returned as it was
