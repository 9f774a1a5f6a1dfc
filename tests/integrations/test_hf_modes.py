"""Every generation mode of ``generate`` against the single-prompt reference: the prompt is
decided as a whole, exactly as one unchunked prefill of it alone decides it, whatever the mode
(chunked prefill, draft tokens, beams, returned sequences, caches); what dsg cannot follow is
refused. The two prompts are built so that a decision on part of a pass goes wrong: FIRING has
a benign lead-in (its first chunk does not fire) and QUIET a forget-like opening (its first
chunk fires)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from hf_world import load_hf
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache
from transformers.generation.configuration_utils import GenerationMode

from dsg.bundle import Bundle
from dsg.hf import GuardrailStateError, attach
from dsg_runtime.hf_generation import REFUSED_MODES, SUPPORTED_MODES

torch.set_num_threads(1)

FIRING = "she is at home near the sea vex zyx quazz pox vexx zyq quazz vex zyx quazz pox vexx zyq"
QUIET = "vex zyx quazz pox a dear friend reads in the garden by the sea"
LEAD_IN = len("she is at home near the sea ") + 1  # + BOS: the first chunk that does not fire
ATOL = 1e-4
NEW = 3
DRAFTS = 12  # room for draft tokens enough to move a decision taken on prompt + drafts
HAS_CHUNKED_PREFILL = hasattr(GenerationConfig(), "prefill_chunk_size")

TESTED_MODES = {"greedy_search", "sample", "beam_search", "beam_sample", "assisted_generation"}
"""The modes run against the reference below."""


def settings(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    return {
        "max_new_tokens": NEW,
        "do_sample": False,
        "return_dict_in_generate": True,
        "output_logits": True,
        "pad_token_id": tokenizer.pad_token_id,
        **extra,
    }


def encode(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


@pytest.fixture(scope="module")
def reference(world: dict[str, Any]) -> dict[str, tuple[bool, float, torch.Tensor]]:
    """Each prompt alone, plain greedy generation under the guardrail: (fired, rate, first-step
    logits); FIRING's guarded logits differ from the unguarded ones, QUIET's do not."""
    model, tokenizer = world["model"], world["tokenizer"]
    found = {}
    for text in (FIRING, QUIET):
        enc = encode(tokenizer, [text])
        with torch.no_grad():
            plain = model.generate(**enc, **settings(tokenizer)).logits[0]
            with attach(model, Bundle.load(world["bundle_dir"])) as handle:
                guarded = model.generate(**enc, **settings(tokenizer)).logits[0]
                found[text] = (bool(handle.fired[0]), float(handle.rates[0]), guarded[0])
        assert torch.equal(plain, guarded) != found[text][0]
    assert found[FIRING][0] and not found[QUIET][0]
    return found


@pytest.fixture(scope="module")
def assistant(world: dict[str, Any]) -> Any:
    """An unguarded copy of the model, as a draft model that proposes many tokens at once."""
    model = load_hf(world["model_dir"])[0]
    model.generation_config.num_assistant_tokens = DRAFTS
    model.generation_config.num_assistant_tokens_schedule = "constant"
    return model


def guarded_run(
    world: dict[str, Any], texts: list[str], **extra: Any
) -> tuple[list[tuple[bool, float]], Any]:
    """``generate`` under a fresh guardrail: each row's (fired, rate), and the output. A
    setting this transformers cannot run without the guardrail either (a missing package,
    offloading without an accelerator, a mode an older release breaks on this model) is
    skipped with transformers' own error: there is nothing to guard."""
    model, tokenizer = world["model"], world["tokenizer"]
    fresh = {k: copy.deepcopy(v) if k == "past_key_values" else v for k, v in extra.items()}
    try:
        with torch.no_grad():
            model.generate(**encode(tokenizer, texts), **settings(tokenizer, **fresh))
    except Exception as exc:  # noqa: BLE001  (transformers' own refusal, unguarded)
        pytest.skip(f"{sorted(extra)} fails without the guardrail here: {exc}")
    with attach(model, Bundle.load(world["bundle_dir"])) as handle, torch.no_grad():
        out = model.generate(**encode(tokenizer, texts), **settings(tokenizer, **extra))
        return list(zip(handle.fired.tolist(), handle.rates.tolist(), strict=True)), out


def assert_matches(
    reference: dict[str, tuple[bool, float, torch.Tensor]],
    texts: list[str],
    decided: list[tuple[bool, float]],
    first_logits: torch.Tensor,
    per_prompt: int = 1,
) -> None:
    """Row ``i * per_prompt + j`` belongs to ``texts[i]``: its decision, its rate and its
    first-step logits are the prompt's alone."""
    assert decided == [reference[t][:2] for t in texts for _ in range(per_prompt)]
    for row in range(len(decided)):
        expected = reference[texts[row // per_prompt]][2]
        torch.testing.assert_close(first_logits[row], expected, atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- chunked prefill


needs_chunking = pytest.mark.skipif(
    not HAS_CHUNKED_PREFILL, reason="this transformers has no prefill_chunk_size"
)


@needs_chunking
@pytest.mark.parametrize("text", [FIRING, QUIET])
@pytest.mark.parametrize("chunk", [8, LEAD_IN])
def test_chunked_prefill_decides_on_the_whole_prompt(
    world: dict[str, Any], reference: Any, text: str, chunk: int
) -> None:
    decided, out = guarded_run(world, [text], prefill_chunk_size=chunk)
    assert_matches(reference, [text], decided, out.logits[0])
    whole = guarded_run(world, [text])[1]  # every later step carries the decision as unchunked
    torch.testing.assert_close(
        torch.stack(out.logits), torch.stack(whole.logits), atol=ATOL, rtol=1e-5
    )


@needs_chunking
@pytest.mark.parametrize(
    "expand", [{"num_beams": 2}, {"do_sample": True, "num_return_sequences": 2}], ids=str
)
def test_a_chunked_prompts_decision_follows_its_rows_into_beams_and_returned_sequences(
    world: dict[str, Any], reference: Any, expand: dict[str, Any]
) -> None:
    """The prompt is decided before generate expands it, so the decision is repeated as
    generate repeats each prompt (``repeat_interleave``): row 2i and 2i + 1 are prompt i's.
    A firing row's first-step logits are the prompt's alone under the guardrail; a quiet row's
    are the plain model's under the same settings (transformers 4.57's chunked prefill with
    sampling computes the left-padded row 3e-3 away from an unchunked pass, guarded or not)."""
    model, tokenizer = world["model"], world["tokenizer"]
    texts = [FIRING, QUIET]
    torch.manual_seed(0)
    decided, out = guarded_run(world, texts, prefill_chunk_size=8, **expand)
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model.generate(
            **encode(tokenizer, texts), **settings(tokenizer, prefill_chunk_size=8, **expand)
        )
    assert decided == [reference[t][:2] for t in texts for _ in range(2)]
    for row, (fired, _) in enumerate(decided):
        if fired:
            expected = reference[texts[row // 2]][2]
            torch.testing.assert_close(out.logits[0][row], expected, atol=ATOL, rtol=1e-5)
        else:
            assert torch.equal(out.logits[0][row], plain.logits[0][row])


@needs_chunking
def test_chunked_prefill_from_the_generation_config(world: dict[str, Any], reference: Any) -> None:
    model = world["model"]
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)  # a copy keeps transformers' bookkeeping
    model.generation_config.prefill_chunk_size = 8
    try:
        decided, out = guarded_run(world, [FIRING])
        assert_matches(reference, [FIRING], decided, out.logits[0])
        config = GenerationConfig(**{**settings(world["tokenizer"]), "prefill_chunk_size": 8})
        with attach(model, Bundle.load(world["bundle_dir"])) as handle, torch.no_grad():
            out = model.generate(**encode(world["tokenizer"], [QUIET]), generation_config=config)
            decided = list(zip(handle.fired.tolist(), handle.rates.tolist(), strict=True))
            assert_matches(reference, [QUIET], decided, out.logits[0])
    finally:
        model.generation_config = saved


@needs_chunking
def test_chunked_prefill_needs_the_attention_mask(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    ids = encode(tokenizer, [FIRING])["input_ids"]
    with (
        attach(model, Bundle.load(world["bundle_dir"])),
        pytest.raises(GuardrailStateError, match="attention_mask"),
    ):
        model.generate(input_ids=ids, prefill_chunk_size=8, max_new_tokens=2)


# --------------------------------------------------------------------------- how the prompt comes


def test_a_prompt_passed_by_keyword_or_as_embeddings_is_decided_as_its_ids(
    world: dict[str, Any], reference: Any
) -> None:
    """``generate(ids)``, ``generate(input_ids=ids)`` and ``generate(inputs_embeds=...)`` of the
    same prompts: each row decided and answered as its prompt alone."""
    model, tokenizer = world["model"], world["tokenizer"]
    texts = [FIRING, QUIET]
    enc = encode(tokenizer, texts)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(enc["input_ids"])
    ways = {
        "positional": ((enc["input_ids"],), {"attention_mask": enc["attention_mask"]}),
        "keyword": ((), enc),
        "embeddings": ((), {"inputs_embeds": embeds, "attention_mask": enc["attention_mask"]}),
    }
    for args, kwargs in ways.values():
        with attach(model, Bundle.load(world["bundle_dir"])) as handle, torch.no_grad():
            out = model.generate(*args, **kwargs, **settings(tokenizer))
            decided = list(zip(handle.fired.tolist(), handle.rates.tolist(), strict=True))
        assert_matches(reference, texts, decided, out.logits[0])


@pytest.mark.parametrize("ids", [None, torch.tensor([2, 5, 7])], ids=["none", "one-dimensional"])
def test_generate_without_a_batch_of_prompts_is_refused(world: dict[str, Any], ids: Any) -> None:
    """No prompt (generate would start from its BOS) or ids that are not ``[batch, length]``:
    the guardrail cannot tell what to decide on."""
    with attach(world["model"], Bundle.load(world["bundle_dir"])):
        with pytest.raises(GuardrailStateError, match=r"no prompt: pass input_ids \(a \[batch"):
            world["model"].generate(ids, max_new_tokens=2)


def test_a_prompt_row_that_attends_none_of_its_tokens_is_refused(world: dict[str, Any]) -> None:
    """A row whose attention mask is all zeros has nothing to decide on: refused, not served
    unguarded."""
    model, tokenizer = world["model"], world["tokenizer"]
    enc = encode(tokenizer, [FIRING, QUIET])
    enc["attention_mask"][1] = 0
    with attach(model, Bundle.load(world["bundle_dir"])), torch.no_grad():
        with pytest.raises(GuardrailStateError, match="^batch row 1 attends no token"):
            model.generate(**enc, **settings(tokenizer))


def test_generate_inside_a_prefix_decision_is_refused(world: dict[str, Any]) -> None:
    """``decided_on_prefix`` is for one scoring pass over prompts and continuations; a
    generation inside it has its own prompt, so the two cannot both hold."""
    model, tokenizer = world["model"], world["tokenizer"]
    enc = encode(tokenizer, [FIRING])
    everything = enc["attention_mask"].bool()
    with attach(model, Bundle.load(world["bundle_dir"])) as handle, torch.no_grad():
        with handle.decided_on_prefix(everything, everything):
            with pytest.raises(GuardrailStateError, match="^decided_on_prefix does not apply"):
                model.generate(**enc, **settings(tokenizer))


# --------------------------------------------------------------------------- draft tokens


@pytest.mark.parametrize("text", [FIRING, QUIET])
def test_assisted_decoding_decides_without_the_draft_tokens(
    world: dict[str, Any], reference: Any, assistant: Any, text: str
) -> None:
    decided, out = guarded_run(world, [text], assistant_model=assistant, max_new_tokens=DRAFTS)
    assert_matches(reference, [text], decided, out.logits[0])


@pytest.mark.parametrize("text", [FIRING, QUIET])
def test_prompt_lookup_decides_without_the_candidates(
    world: dict[str, Any], reference: Any, text: str
) -> None:
    decided, out = guarded_run(
        world, [text], prompt_lookup_num_tokens=DRAFTS, max_new_tokens=DRAFTS
    )
    assert_matches(reference, [text], decided, out.logits[0])


def test_the_guarded_model_as_its_own_assistant_is_refused(world: dict[str, Any]) -> None:
    with pytest.raises(GuardrailStateError, match="its own assistant"):
        guarded_run(world, [FIRING], assistant_model=world["model"])


# --------------------------------------------------------------------------- batch modes


def test_returned_sequences_and_sampling(world: dict[str, Any], reference: Any) -> None:
    torch.manual_seed(0)
    texts = [FIRING, QUIET]
    decided, out = guarded_run(world, texts, do_sample=True, num_return_sequences=3)
    assert_matches(reference, texts, decided, out.logits[0], per_prompt=3)


@pytest.mark.parametrize("sample", [False, True])
def test_beam_search(world: dict[str, Any], reference: Any, sample: bool) -> None:
    torch.manual_seed(0)
    texts = [FIRING, QUIET]
    decided, out = guarded_run(world, texts, num_beams=3, do_sample=sample)
    assert_matches(reference, texts, decided, out.logits[0], per_prompt=3)


def cache_implementations() -> list[str]:
    from transformers.generation import configuration_utils

    return list(getattr(configuration_utils, "ALL_CACHE_IMPLEMENTATIONS", ("static",)))


@pytest.mark.parametrize("implementation", cache_implementations())
def test_cache_implementations(world: dict[str, Any], reference: Any, implementation: str) -> None:
    """Every cache ``generate`` can build (one that fails unguarded here is skipped)."""
    texts = [FIRING, QUIET]
    decided, out = guarded_run(world, texts, cache_implementation=implementation)
    assert_matches(reference, texts, decided, out.logits[0])


def test_without_a_cache_every_step_carries_the_prompts_decision(
    world: dict[str, Any], reference: Any
) -> None:
    """Each step reruns prompt + generated tokens: still decided on the prompt alone, so every
    step's logits are those of cached generation, and ``fired`` is the prompt's."""
    for text in (FIRING, QUIET):
        decided, out = guarded_run(world, [text], use_cache=False, max_new_tokens=DRAFTS)
        assert_matches(reference, [text], decided, out.logits[0])
        cached = guarded_run(world, [text], max_new_tokens=DRAFTS)[1]
        torch.testing.assert_close(
            torch.stack(out.logits), torch.stack(cached.logits), atol=ATOL, rtol=1e-5
        )


# --------------------------------------------------------------------------- passed-in caches


def unguarded_cache(world: dict[str, Any], text: str) -> Any:
    """A cache of ``text`` minus its last token, filled by an unguarded copy of the model."""
    copy = load_hf(world["model_dir"])[0]
    enc = encode(world["tokenizer"], [text])
    with torch.no_grad():
        return copy(input_ids=enc["input_ids"][:, :-1], use_cache=True).past_key_values


@pytest.mark.parametrize("reused", [False, True])
def test_a_cache_the_guardrail_did_not_fill_is_refused(world: dict[str, Any], reused: bool) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    cache = unguarded_cache(world, FIRING)
    with attach(model, Bundle.load(world["bundle_dir"])), torch.no_grad():
        if reused:
            model.generate(**encode(tokenizer, [QUIET]), **settings(tokenizer))
        with pytest.raises(GuardrailStateError, match="already holds"):
            model.generate(
                **encode(tokenizer, [FIRING]), **settings(tokenizer), past_key_values=cache
            )


def test_a_reused_handle_refuses_a_foreign_cache_outside_generate(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    ids = encode(tokenizer, [FIRING])["input_ids"]
    cache = unguarded_cache(world, FIRING)
    with attach(model, Bundle.load(world["bundle_dir"])), torch.no_grad():
        model.generate(**encode(tokenizer, [QUIET]), **settings(tokenizer))
        with pytest.raises(GuardrailStateError, match="did not see filled"):
            model(input_ids=ids[:, -1:], past_key_values=cache)


def test_an_empty_cache_passed_in_is_the_generations_own(
    world: dict[str, Any], reference: Any
) -> None:
    decided, out = guarded_run(world, [FIRING], past_key_values=DynamicCache())
    assert_matches(reference, [FIRING], decided, out.logits[0])


def test_decode_steps_outside_generate_follow_their_own_cache(world: dict[str, Any]) -> None:
    """A prompt pass, then one token a step on the cache it returned; several tokens at once
    on a cache (more prompt, or drafts?) are refused outside generate."""
    model, tokenizer = world["model"], world["tokenizer"]
    ids = encode(tokenizer, [FIRING])["input_ids"]
    with attach(model, Bundle.load(world["bundle_dir"])) as handle, torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        step = out.logits[:, -1:].argmax(-1)
        model(input_ids=step, past_key_values=out.past_key_values)
        assert handle.fired.tolist() == [True]
        with pytest.raises(GuardrailStateError, match="more prompt from generated"):
            model(input_ids=ids[:, :3], past_key_values=out.past_key_values)


# --------------------------------------------------------------------------- refused and counted


REFUSED_SETTINGS = {
    "contrastive_search": {"penalty_alpha": 0.6, "top_k": 4},
    "dola_generation": {"dola_layers": "high"},
    "group_beam_search": {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0},
    "constrained_beam_search": {"num_beams": 2, "force_words_ids": [[5]]},
}


OUTSIDE_THE_GUARDED_PATH = {
    "custom_generate": ({"custom_generate": "someone/decoding"}, "custom_generate runs code"),
    "custom_generate function": (
        {"custom_generate": lambda **kwargs: None},
        "custom_generate runs code",
    ),
    "negative_prompt_ids": (
        {"negative_prompt_ids": torch.tensor([[2, 5]])},
        "negative_prompt_ids (classifier-free guidance) runs the model on a second prompt",
    ),
    "negative_prompt_attention_mask": (
        {"negative_prompt_attention_mask": torch.ones(1, 2, dtype=torch.long)},
        "negative_prompt_attention_mask (classifier-free guidance) runs the model on a second",
    ),
    "guidance_scale": (
        {"guidance_scale": 1.5},
        "classifier-free guidance (guidance_scale) runs the model on a second prompt",
    ),
    "assistant_early_exit": (
        {"assistant_early_exit": 1},
        "assistant_early_exit drafts with the guarded model's own early layers",
    ),
    "use_mtp": ({"use_mtp": True}, "use_mtp drafts with the model's multi-token-prediction"),
    "paged": ({"cache_implementation": "paged"}, 'cache_implementation="paged" (continuous'),
}
"""Settings under which generate runs (part of) the model outside the guarded pass, and the
line each is refused with."""

REFUSED = {
    **{mode: (extra, f"{mode.replace('_', ' ')}: ") for mode, extra in REFUSED_SETTINGS.items()},
    **OUTSIDE_THE_GUARDED_PATH,
}
"""Every refused mode and setting, with the start of the line it is refused with."""


def _knows_paged_attention() -> bool:
    try:
        GenerationConfig(cache_implementation="paged").validate()
    except ValueError:
        return False
    return True


UNKNOWN_HERE = {
    name: message
    for name, message, known in (
        ("use_mtp", "use_mtp", hasattr(GenerationConfig(), "use_mtp")),
        ("paged", "cache_implementation", _knows_paged_attention()),
    )
    if not known
}
"""Refused settings this transformers release does not have (4.x): its own error, no pass."""


@pytest.mark.parametrize("refused_setting", sorted(REFUSED))
def test_modes_and_settings_dsg_cannot_follow_are_refused(
    world: dict[str, Any], refused_setting: str
) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    extra, line = REFUSED[refused_setting]
    with attach(model, Bundle.load(world["bundle_dir"])) as handle:
        if refused_setting in UNKNOWN_HERE:  # transformers refuses it itself, before a pass
            with pytest.raises(ValueError, match=UNKNOWN_HERE[refused_setting]):
                model.generate(**encode(tokenizer, [FIRING]), max_new_tokens=2, **extra)
            assert handle.fired is None
            return
        with pytest.raises(GuardrailStateError) as refused:
            model.generate(**encode(tokenizer, [FIRING]), max_new_tokens=2, **extra)
        assert str(refused.value).startswith(f"the guardrail cannot guard generate with {line}")
        assert handle.fired is None  # refused before any forward pass


def test_every_generation_mode_is_tested_or_refused() -> None:
    """A mode a transformers release adds fails here until it is tested or refused."""
    modes = {mode.value for mode in GenerationMode}
    assert set(SUPPORTED_MODES) == TESTED_MODES
    assert set(REFUSED_MODES) == set(REFUSED_SETTINGS)
    assert modes <= TESTED_MODES | set(REFUSED_MODES), modes - TESTED_MODES - set(REFUSED_MODES)


def test_remove_gives_the_model_its_own_generate_back(world: dict[str, Any]) -> None:
    model = world["model"]
    first = attach(model, Bundle.load(world["bundle_dir"]))
    second = attach(model, Bundle.load(world["bundle_dir"]), stack=True)
    first.remove()  # under the second: its wrapper stays, and passes calls through
    second.remove()
    assert "generate" not in model.__dict__ or not hasattr(model.generate, "__dsg_guardrail__")
    with attach(model, Bundle.load(world["bundle_dir"])):
        assert "generate" in model.__dict__
    assert "generate" not in model.__dict__
