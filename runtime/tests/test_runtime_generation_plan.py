"""A ``generate`` call as the guardrail reads it before generation runs
(dsg_runtime.hf_generation.generation_plan): the prompt, whether it will be prefilled in chunks
and the prompt's forward pass then, and the settings it refuses, each with its own line."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers
from tiny_llama import HIT, QUIET, tiny_llama
from transformers import GenerationConfig

from dsg_runtime.errors import GuardrailStateError
from dsg_runtime.hf_generation import generation_plan

REFUSAL = "the guardrail cannot guard generate with "
IDS = torch.tensor([[QUIET, QUIET, HIT, HIT], [HIT, QUIET, HIT, QUIET]])
MASK = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
POSITIONS = [[0, 0, 0, 1], [0, 1, 2, 3]]  # generate's numbering of a left-padded prompt
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
chunked_prefill = pytest.mark.skipif(
    not hasattr(GenerationConfig(), "prefill_chunk_size"), reason="no chunked prefill"
)


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama()


def refused(model: Any, *args: Any, **kwargs: Any) -> str:
    """The line generation_plan refuses the call with, less the common start."""
    with pytest.raises(GuardrailStateError) as error:
        generation_plan(model, args, kwargs)
    line = str(error.value)
    assert line.startswith(REFUSAL)
    return line.removeprefix(REFUSAL)


def test_a_prompt_given_by_position_alone() -> None:
    plan = generation_plan(tiny_llama(), (IDS,), {})
    assert (plan.prompt_length, plan.chunked, plan.forward_inputs) == (4, False, {})
    assert plan.prompt is IDS and plan.prompt_name == "input_ids"


def test_a_prompt_given_by_keyword(model: Any) -> None:
    plan = generation_plan(model, (), {"input_ids": IDS[:, 1:], "attention_mask": MASK[:, 1:]})
    assert plan.prompt_length == 3 and plan.prompt_name == "input_ids"
    assert torch.equal(plan.prompt, IDS[:, 1:])


def test_embeddings_are_the_prompt_when_given(model: Any) -> None:
    embeds = torch.zeros(2, 5, 16)
    plan = generation_plan(model, (IDS,), {"inputs_embeds": embeds})
    assert plan.prompt is embeds and plan.prompt_name == "inputs_embeds"
    assert plan.prompt_length == 5


@pytest.mark.parametrize(
    "prompt", [[[HIT, QUIET]], torch.tensor([HIT, QUIET]), None], ids=["list", "1-d", "none"]
)
def test_a_call_without_a_batch_of_ids_is_refused(model: Any, prompt: Any) -> None:
    line = refused(model, input_ids=prompt, max_new_tokens=2)
    assert line == "no prompt: pass input_ids (a [batch, length] tensor)"


@chunked_prefill
def test_a_chunked_prompt_is_decided_with_generates_own_positions(model: Any) -> None:
    plan = generation_plan(model, (IDS,), {"attention_mask": MASK, "prefill_chunk_size": 2})
    assert plan.chunked
    assert set(plan.forward_inputs) == {"input_ids", "attention_mask", "position_ids"}
    assert plan.forward_inputs["input_ids"] is IDS and plan.forward_inputs["attention_mask"] is MASK
    assert plan.forward_inputs["position_ids"].tolist() == POSITIONS


@chunked_prefill
def test_a_chunked_prompt_keeps_the_positions_it_was_given(model: Any) -> None:
    given = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    plan = generation_plan(
        model, (IDS,), {"attention_mask": MASK, "position_ids": given, "prefill_chunk_size": 2}
    )
    assert plan.forward_inputs["position_ids"] is given


@pytest.mark.parametrize(
    "call",
    [
        {"input_ids": IDS, "prefill_chunk_size": 2},
        {"input_ids": IDS, "attention_mask": MASK[None], "prefill_chunk_size": 2},
        {"inputs_embeds": torch.zeros(2, 4, 16), "attention_mask": MASK, "prefill_chunk_size": 2},
    ],
    ids=["no-mask", "4-d-mask", "embeddings"],
)
@chunked_prefill
def test_a_chunked_prompt_needs_ids_and_a_2d_mask(model: Any, call: dict[str, Any]) -> None:
    assert refused(model, **call) == (
        "chunked prefill (prefill_chunk_size) needs input_ids and their 2-D attention_mask, "
        "to decide on the whole prompt first"
    )


def test_a_filled_cache_is_refused_and_an_empty_one_is_not(model: Any) -> None:
    with torch.no_grad():
        cache = model(input_ids=IDS[:, :3], use_cache=True).past_key_values
    assert refused(model, IDS, past_key_values=cache) == (
        "a KV cache (past_key_values) that already holds 3 positions: the prompt is decided as "
        "a whole and positions the guardrail did not process cannot be vouched for; pass the "
        "whole prompt and no cache"
    )
    assert generation_plan(model, (IDS,), {"past_key_values": transformers.DynamicCache()})


@pytest.mark.skipif(not TRANSFORMERS_5, reason="transformers 4 refuses DoLa with beams itself")
def test_dola_layers_are_refused_in_beam_search_too(model: Any) -> None:
    """With beams, transformers keeps the beam-search mode and warns; dola_layers still asks
    for what the guardrail cannot follow."""
    line = refused(model, IDS, num_beams=2, dola_layers="high")
    assert line == "DoLa (dola_layers): it reads and mixes early layers outside the guarded path"


@pytest.mark.parametrize("scale", [1, 1.0, None])
def test_a_guidance_scale_of_one_is_no_guidance(model: Any, scale: Any) -> None:
    assert not generation_plan(model, (IDS,), {"guidance_scale": scale}).chunked


def test_the_generation_config_argument_is_read(model: Any) -> None:
    config = GenerationConfig(num_beams=4, num_beam_groups=2, diversity_penalty=1.0)
    assert refused(model, IDS, generation_config=config) == (
        "group beam search: it runs as downloaded hub code"
    )


def test_a_mode_no_test_has_checked_is_refused(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GenerationConfig, "get_generation_mode", lambda self: "lookahead")
    line = refused(model, IDS)
    assert line == "the generation mode 'lookahead', which it has not been checked against"


def test_a_mode_read_as_a_plain_string_is_followed(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GenerationConfig, "get_generation_mode", lambda self: "greedy_search")
    assert generation_plan(model, (IDS,), {}).prompt is IDS


class _OlderTransformers:
    """A model whose ``_prepare_generation_config`` behaves as an older transformers's does:
    it names generate's ``synced_gpus`` (as 4.50-4.57 name ``use_model_defaults``), and returns
    a config without the settings added since 4.45 (assistant_early_exit, use_mtp,
    prefill_chunk_size), alone or in a tuple."""

    def __init__(self, model: Any, as_tuple: bool) -> None:
        self.model, self.as_tuple, self.got = model, as_tuple, None

    def __call__(self, generation_config: Any, synced_gpus: Any = None, **kwargs: Any) -> Any:
        self.got = (generation_config, synced_gpus, kwargs)
        config = SimpleNamespace(
            dola_layers=None,
            guidance_scale=None,
            cache_implementation=None,
            get_generation_mode=lambda: SimpleNamespace(value="sample"),
        )
        return (config, kwargs) if self.as_tuple else config


@pytest.mark.parametrize("as_tuple", [True, False], ids=["tuple", "config-alone"])
def test_an_older_transformers_config_is_read(
    model: Any, monkeypatch: pytest.MonkeyPatch, as_tuple: bool
) -> None:
    prepare = _OlderTransformers(model, as_tuple)
    monkeypatch.setattr(model, "_prepare_generation_config", prepare, raising=False)
    config = GenerationConfig(do_sample=True)
    plan = generation_plan(model, (IDS, config), {"synced_gpus": False, "max_new_tokens": 3})
    assert plan.prompt is IDS and not plan.chunked
    assert prepare.got == (config, False, {"max_new_tokens": 3})


def test_a_transformers_whose_settings_cannot_be_read_is_refused(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(generation_config: Any, **kwargs: Any) -> Any:
        raise TypeError("an unexpected keyword")

    monkeypatch.setattr(model, "_prepare_generation_config", unreadable, raising=False)
    assert refused(model, IDS) == (
        f"transformers {transformers.__version__}, whose generation settings it cannot read "
        "(TypeError: an unexpected keyword)"
    )
