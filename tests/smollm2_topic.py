"""SmolLM2-135M-Instruct's chat prompts on and off a made-up forget topic (biology), and an SAE
whose first features read it."""

from __future__ import annotations

from typing import Any

import torch
from direction_sae import direction_sae
from sae_lens import JumpReLUSAE

NAME = "smollm2-135m-instruct"


LAYER = 3


HOOK = f"blocks.{LAYER}.hook_resid_post"


FORGET = [
    "Mitochondria produce energy for the cell through respiration.",
    "The virus infects host cells and copies its genome.",
    "Bacteria divide by binary fission and share genes.",
]


RETAIN = [
    "Paris is the capital city of France.",
    "The river flows past the old town and its bridges.",
    "Rome was the capital of a large empire.",
]


MIXED = ["Enzymes inside the cell break proteins down.", "Madrid is a city in Spain."]


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    """The prompt as dsg generate sends it: the chat template, whose first token is the BOS."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def layer_resid(model: Any, rows: list[list[int]]) -> torch.Tensor:
    """The residual after decoder layer LAYER at every real position of the rows, stacked."""
    out = []
    with torch.no_grad():
        for ids in rows:
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            out.append(hidden[LAYER + 1][0, 1:])  # position 0 (the BOS) is never counted
    return torch.cat(out)


def topic_sae(hf: Any, tokenizer: Any, d_sae: int = 16, k: int = 3) -> JumpReLUSAE:
    """Features 0..k-1 read the direction from the retain prompts' residuals to the forget
    prompts'; the rest are random and never fire."""
    f = layer_resid(hf, [chat_ids(tokenizer, t) for t in FORGET]).mean(0)
    r = layer_resid(hf, [chat_ids(tokenizer, t) for t in RETAIN]).mean(0)
    return direction_sae(f, r, d_sae, k, noise=0.1, other_bias=-1e4)
