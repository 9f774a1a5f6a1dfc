"""How the guardrail on a transformers model tells a prompt from a continuation: from the cache
object (by type, under any keyword), the mask length and its own record, never from a keyword's
name; and how it fails closed when these cannot be reconciled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hf_world import MIXED_PROMPTS
from transformers.cache_utils import DynamicCache

from dsg.bundle import Bundle
from dsg.hf import GuardrailStateError, attach

D_MODEL = 4


class _Layer(torch.nn.Module):
    def forward(self, hidden: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return hidden


class _Decoder(torch.nn.Module):
    """A decoder whose cache keyword is called ``memo``: no transformers release uses that name."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Layer(), _Layer()])

    def forward(
        self, hidden: torch.Tensor, attention_mask: Any = None, memo: Any = None
    ) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class _ToyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _Decoder()
        self.config = type("Config", (), {"hidden_size": D_MODEL})()

    def forward(self, hidden: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(hidden, **kwargs)


def _toy_bundle(tmp_path: Path) -> Bundle:
    """One ReLU feature reading coordinate 0 (a hit wherever x0 > 0.5), alpha 0.3, clamp to -10
    along coordinate 1; the residual is the identity, so every number can be checked by hand."""
    w_enc = torch.zeros(D_MODEL, 1)
    w_enc[0, 0] = 1.0
    w_dec = torch.zeros(1, D_MODEL)
    w_dec[0, 1] = 1.0
    bundle = Bundle(
        hook_name="blocks.0.hook_resid_post",
        features=(0,),
        threshold=0.3,
        multiplier=10.0,
        strategy="dynamic",
        activation="relu",
        apply_b_dec_to_input=False,
        d_sae=1,
        tensors={
            "W_enc": w_enc,
            "b_enc": torch.tensor([-0.5]),
            "W_dec": w_dec,
            "b_dec": torch.zeros(D_MODEL),
        },
    )
    return Bundle.load(bundle.save(tmp_path / "toy"))


def _hidden(x0: list[list[float]]) -> torch.Tensor:
    h = torch.zeros(len(x0), len(x0[0]), D_MODEL)
    h[..., 0] = torch.tensor(x0)
    return h


def _cache_of(length: int, batch: int) -> DynamicCache:
    cache = DynamicCache()
    cache.update(torch.zeros(batch, 1, length, 2), torch.zeros(batch, 1, length, 2), 0)
    return cache


@pytest.fixture
def toy(tmp_path: Path) -> tuple[_ToyLM, Bundle]:
    """The toy has no embeddings to probe, so its bundle is unbound: attached with the binding
    check overridden."""
    return _ToyLM(), _toy_bundle(tmp_path)


def test_a_cache_under_an_unknown_keyword_carries_the_decision(toy: Any) -> None:
    model, bundle = toy
    # row 0: BOS + 3 hits of 4 (rate 0.75 > 0.3, fires); row 1: BOS + 1 hit of 4 (0.25, not)
    prompt = _hidden([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    with attach(model, bundle, allow_mismatch=True) as handle:
        out = model(prompt, attention_mask=torch.ones(2, 4, dtype=torch.long))
        assert handle.fired.tolist() == [True, False]
        assert handle.rates.tolist() == [0.75, 0.25]
        # the prompt's hits: a = x0 - 0.5 = 0.5; the clamp adds (-10 - 0.5) along coordinate 1
        assert out[0, 1:, 1].tolist() == [-10.5] * 3 and out[0, 0, 1] == 0.0
        assert torch.equal(out[1], prompt[1])
        # a one-token step whose mask is not passed: only the cache says it continues
        step = _hidden([[2.0], [2.0]])
        out = model(step, memo=_cache_of(4, 2))
        assert out[0, 0, 1] == -11.5  # -10 - a, a = 2 - 0.5
        assert torch.equal(out[1], step[1])  # row 1 stays undecided-for-clamping
        assert handle.fired.tolist() == [True, False]  # a 1-token step decides nothing


def test_a_continuation_without_its_prompt_is_refused(toy: Any) -> None:
    model, bundle = toy
    with attach(model, bundle, allow_mismatch=True):
        with pytest.raises(GuardrailStateError, match="did not decide"):
            model(_hidden([[1.0]]), memo=_cache_of(5, 1))


def test_a_cache_longer_than_what_the_guardrail_followed_is_refused(toy: Any) -> None:
    model, bundle = toy
    with attach(model, bundle, allow_mismatch=True):
        model(_hidden([[1.0, 1.0, 1.0]]))
        model(_hidden([[1.0]]), memo=_cache_of(3, 1))
        with pytest.raises(GuardrailStateError, match="ran unguarded"):
            model(_hidden([[1.0]]), memo=_cache_of(6, 1))


def test_mask_and_cache_that_disagree_are_refused(toy: Any) -> None:
    model, bundle = toy
    with attach(model, bundle, allow_mismatch=True):
        model(_hidden([[1.0, 1.0, 1.0]]))
        ones = torch.ones(1, 1, dtype=torch.long)  # the mask says: a new one-token prompt
        with pytest.raises(GuardrailStateError) as refused:
            model(_hidden([[1.0]]), attention_mask=ones, memo=_cache_of(3, 1))
    assert str(refused.value) == (
        "the guardrail cannot tell whether this forward pass starts or continues a sequence: "
        "attention mask says 0 positions came before, KV cache says 3 positions came before"
    )


def test_a_mask_shorter_than_the_new_positions_is_refused(toy: Any) -> None:
    """Two new positions under a one-position mask: the mask would place them before the
    sequence's start, so nothing says where they go."""
    model, bundle = toy
    with attach(model, bundle, allow_mismatch=True):
        model(_hidden([[1.0, 1.0, 1.0]]))
        ones = torch.ones(1, 1, dtype=torch.long)
        with pytest.raises(GuardrailStateError) as refused:
            model(_hidden([[1.0, 1.0]]), attention_mask=ones, memo=_cache_of(3, 1))
    assert str(refused.value) == (
        "the guardrail cannot place 2 new positions: attention mask says -1 positions came "
        "before, KV cache says 3 positions came before"
    )


def test_a_legacy_tuple_cache_is_recognised(toy: Any) -> None:
    model, bundle = toy
    legacy = tuple((torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2)) for _ in range(2))
    with attach(model, bundle, allow_mismatch=True) as handle:
        model(_hidden([[1.0, 1.0, 1.0]]))
        out = model(_hidden([[1.0]]), memo=legacy)
        assert handle.fired.tolist() == [True] and out[0, 0, 1] == -10.5


def test_the_guarded_layer_alone_is_refused(toy: Any) -> None:
    model, bundle = toy
    with (
        attach(model, bundle, allow_mismatch=True),
        pytest.raises(GuardrailStateError, match="outside"),
    ):
        model.model.layers[0](_hidden([[1.0, 1.0]]))


def test_attaching_after_the_prompt_refuses_the_decode_steps(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        prefill = model(**enc, use_cache=True)
        step = prefill.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(step)], dim=1)
        with attach(model, Bundle.load(world["bundle_dir"])):
            with pytest.raises(GuardrailStateError, match="did not decide"):
                model(input_ids=step, attention_mask=mask, past_key_values=prefill.past_key_values)


def test_beam_search_carries_each_prompts_decision(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    bundle = Bundle.load(world["bundle_dir"])
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    settings = {"max_new_tokens": 5, "num_beams": 3, "do_sample": False}
    settings["pad_token_id"] = tokenizer.pad_token_id
    with torch.no_grad():
        plain = model.generate(**enc, **settings)
        with attach(model, bundle) as handle:
            guarded = model.generate(**enc, **settings)
            fired = handle.fired.tolist()
    assert fired == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3  # beams of each prompt
    assert torch.equal(guarded[1], plain[1]) and torch.equal(guarded[3], plain[3])
    assert not torch.equal(guarded[0], plain[0]) and not torch.equal(guarded[2], plain[2])
