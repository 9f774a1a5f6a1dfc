"""The model organism's shipped folder under the installed transformers: the same token ids and
greedy generations, unguarded and guarded, as the newest release recorded in
``organism_reference/expected.json`` (``python -m dsg_organism.portable_reference``). The normal
suite runs this on the tested set, ``nox -s runtime_oldest`` on transformers 4.45.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dsg_runtime.open_unlearning import GuardedModel

MODEL_DIR = Path(__file__).resolve().parents[2] / "plugins" / "dsg_organism" / "data" / "model"
REFERENCE = Path(__file__).with_name("organism_reference")
EXPECTED = json.loads((REFERENCE / "expected.json").read_text(encoding="utf-8"))
LOAD = {"attn_implementation": "eager", "torch_dtype": torch.float32}


@pytest.fixture(scope="module")
def tok() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL_DIR), trust_remote_code=False)


def _generate(model: Any, tok: Any) -> list[list[int]]:
    """The reference's batch: its prompts left-padded, greedy, new tokens only."""
    tok.padding_side = "left"
    enc = tok(EXPECTED["prompts"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=EXPECTED["max_new_tokens"],
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return out[:, enc["input_ids"].shape[1] :].tolist()


def test_the_tokenizer_gives_the_reference_ids(tok: Any) -> None:
    for row in EXPECTED["texts"]:
        assert tok(row["text"])["input_ids"] == row["ids"], row["text"]
        assert tok.decode(row["ids"][1:]) == row["text"]  # after <bos>
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>")] == [0, 1, 2]
    assert set(tok("x")) == {"input_ids", "attention_mask"}  # no token_type_ids for Gemma-2


def test_the_chat_template_renders_gemmas_turns(tok: Any) -> None:
    chat = EXPECTED["chat"]
    text = EXPECTED["texts"][0]["text"]
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == chat["text"]
    assert rendered == f"<bos><start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    assert tok(rendered, add_special_tokens=False)["input_ids"] == chat["ids"]


def test_unguarded_generation_matches_the_reference(tok: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), **LOAD)
    assert _generate(model, tok) == EXPECTED["unguarded"]


def test_guarded_generation_matches_the_reference(tok: Any) -> None:
    """Through open-unlearning's entry; the pathogen prompts fire and change, the others are
    returned as the unguarded model's."""
    model = GuardedModel.from_pretrained(
        str(MODEL_DIR), dsg_bundle=str(REFERENCE / "bundle"), **LOAD
    )
    guarded = _generate(model, tok)
    assert model.dsg_guardrail.fired.tolist() == EXPECTED["fired"] == [True, True, False, False]
    assert guarded == EXPECTED["guarded"]
    for row, fired in enumerate(EXPECTED["fired"]):
        assert (guarded[row] != EXPECTED["unguarded"][row]) is fired
