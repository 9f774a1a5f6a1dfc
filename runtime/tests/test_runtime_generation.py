"""The guardrail on a transformers model the tests build: each row decided on its prompt,
generation carrying that decision, and the modes it cannot follow refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_llama import HIT, QUIET, left_padded, tiny_bundle, tiny_llama

from dsg_runtime.hf import GuardrailStateError, attach
from dsg_runtime.open_unlearning import BUNDLE_SUBDIR, GuardedModel

# rates after each row's BOS: 11/12, 0, 7/8 and 3/4 -> threshold 0.8 fires rows 0 and 2
PROMPTS = [[HIT] * 12, [QUIET] * 12, [QUIET] + [HIT] * 7, [QUIET] + [HIT] * 3]
FIRED = [True, False, True, False]
RATES = [11 / 12, 0.0, 7 / 8, 3 / 4]


def test_a_prompt_is_decided_on_its_attended_tokens() -> None:
    model = tiny_llama()
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with attach(model, tiny_bundle()) as handle:
            guarded = model(input_ids=ids, attention_mask=mask).logits
    assert handle.fired is not None and handle.rates is not None
    assert handle.fired.tolist() == FIRED
    assert handle.rates.tolist() == pytest.approx(RATES)
    changed = (guarded != plain).flatten(1).any(dim=1).tolist()
    assert changed == FIRED  # rows that did not fire are returned bit for bit


def _greedy_without_cache(model: Any, handle: Any, ids: torch.Tensor, mask: torch.Tensor) -> Any:
    """Greedy decoding that reruns the whole sequence each step, decided on the prompt."""
    prompt = mask.bool()
    for _ in range(6):
        generated = torch.ones(len(ids), ids.shape[1] - mask.shape[1], dtype=mask.dtype)
        full = torch.cat([mask, generated], dim=1)
        decide = torch.zeros_like(full, dtype=torch.bool)
        decide[:, : prompt.shape[1]] = prompt
        with handle.decided_on_prefix(decide, full.bool()):
            logits = model(input_ids=ids, attention_mask=full, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_guarded_generation_carries_the_prompts_decision() -> None:
    model = tiny_llama()
    ids, mask = left_padded(PROMPTS)
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": QUIET}
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, **options)
        with attach(model, tiny_bundle()) as handle:
            guarded = model.generate(input_ids=ids, attention_mask=mask, **options)
            assert handle.fired is not None and handle.fired.tolist() == FIRED
            rerun = _greedy_without_cache(model, handle, ids, mask)
    assert torch.equal(guarded, rerun)  # the KV-cache steps clamp as a whole rerun does
    for row, fired in enumerate(FIRED):
        assert torch.equal(guarded[row], plain[row]) is not fired


def test_generation_modes_it_cannot_follow_are_refused() -> None:
    model = tiny_llama()
    ids, mask = left_padded(PROMPTS[:1])
    with attach(model, tiny_bundle()), pytest.raises(GuardrailStateError, match="contrastive"):
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=2, penalty_alpha=0.6, top_k=4
        )


def test_a_continuation_it_did_not_see_start_is_refused() -> None:
    model = tiny_llama()
    ids, mask = left_padded(PROMPTS[:1])
    with torch.no_grad():
        past = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        with attach(model, tiny_bundle()), pytest.raises(GuardrailStateError):
            model(
                input_ids=ids[:, :1],
                attention_mask=torch.ones(1, ids.shape[1] + 1, dtype=torch.long),
                past_key_values=past,
                use_cache=True,
            )


def test_the_open_unlearning_handler_loads_the_model_guarded(tmp_path: Path) -> None:
    model = tiny_llama()
    model.save_pretrained(tmp_path / "model")
    tiny_bundle().save(tmp_path / "model" / BUNDLE_SUBDIR)
    guarded = GuardedModel.from_pretrained(str(tmp_path / "model"))
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        guarded(input_ids=ids, attention_mask=mask)
    assert guarded.dsg_guardrail.fired.tolist() == FIRED


FOLLOWED: dict[str, dict[str, Any]] = {
    "beam search": {"num_beams": 2},
    "sampling": {"do_sample": True, "top_k": 4},
    "prompt lookup": {"prompt_lookup_num_tokens": 2, "eos_token_id": 31},  # 4.45 needs an eos
    "assisted": {"assistant_model": "tiny"},
}


def _generate(model: Any, prompt: list[int], options: dict[str, Any], fired: bool | None) -> Any:
    """One prompt alone (assisted decoding takes batches of one), unguarded when ``fired`` is
    None, else guarded and checked to have decided ``fired``."""
    ids, mask = left_padded([prompt])
    torch.manual_seed(0)  # sampling draws the same numbers guarded or not
    with torch.no_grad():
        if fired is None:
            return model.generate(input_ids=ids, attention_mask=mask, **options)
        with attach(model, tiny_bundle()) as handle:
            out = model.generate(input_ids=ids, attention_mask=mask, **options)
    assert handle.fired is not None and set(handle.fired.tolist()) == {fired}
    return out


@pytest.mark.parametrize("mode", FOLLOWED)
def test_generation_modes_it_follows_leave_unfired_rows_alone(mode: str) -> None:
    model = tiny_llama()
    options = {**FOLLOWED[mode], "max_new_tokens": 4, "pad_token_id": QUIET}
    if options.get("assistant_model") == "tiny":
        options["assistant_model"] = tiny_llama(seed=1)
    for prompt, fired in zip(PROMPTS, FIRED, strict=True):
        guarded = _generate(model, prompt, options, fired)
        if not fired:
            assert torch.equal(guarded, _generate(model, prompt, options, None))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"dola_layers": "low"}, "DoLa|dola"),
        ({"num_beams": 2, "num_beam_groups": 2, "diversity_penalty": 1.0}, "group beam search"),
    ],
)
def test_more_modes_it_cannot_follow_are_refused(options: dict[str, Any], reason: str) -> None:
    model = tiny_llama()
    ids, mask = left_padded(PROMPTS[:1])
    with attach(model, tiny_bundle()), pytest.raises(GuardrailStateError, match=reason):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, **options)


def test_a_generate_whose_settings_it_cannot_read_is_refused() -> None:
    """A transformers whose private generation methods read otherwise fails closed."""
    model = tiny_llama()
    ids, mask = left_padded(PROMPTS[:1])
    with attach(model, tiny_bundle()):
        model._prepare_generation_config = None  # as if a release had removed it
        with pytest.raises(GuardrailStateError, match="cannot read"):
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
