"""What both scoring engines share: prompts as token ids, right-padded batches of similar
length, and the per-row answers and firing decisions of one guardrail."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dsg.api.interfaces import Intervention
from dsg.core.errors import UserError
from dsg.engine.backends.base import ModelBackend, split_layer


def hook_split(backend: ModelBackend, hook_name: str) -> int:
    """The block the engine resumes at after the SAE's hook, checked against the model."""
    split = split_layer(hook_name)
    if split > backend.n_layers:
        raise UserError(f"hook {hook_name!r} is beyond the model's {backend.n_layers} blocks")
    return split


def pad_id(tokenizer: Any) -> int:
    """The id padding fills rows with (never attended): the pad token, else EOS, else 0."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id or 0)


def encode(tokenizer: Any, texts: Sequence[str], n_ctx: int) -> list[list[int]]:
    """Token ids of each prompt, adding no special tokens: the rendered prompt carries its
    own BOS, and a second one would shift every position."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    longest = max((len(row) for row in ids), default=0)
    if longest > n_ctx:
        raise UserError(
            f"an MCQ prompt is {longest} tokens long, beyond the model's context of {n_ctx}"
        )
    if any(len(row) == 0 for row in ids):
        raise UserError("an MCQ prompt renders to no tokens; check the prompt format")
    return ids


@dataclass(frozen=True)
class Batch:
    """Right-padded rows; ``rows`` indexes the prompt list, ``last`` each row's final token."""

    rows: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    last: torch.Tensor


def batches(ids: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Batches of prompts of similar length (longest first), to waste little on padding."""
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = len(ids[rows[0]])
        tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, i in enumerate(rows):
            tokens[r, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            mask[r, : len(ids[i])] = True
        last = mask.sum(dim=1) - 1
        yield Batch(torch.tensor(rows, dtype=torch.long), tokens, mask, last)


@dataclass
class Outcome:
    """Per-prompt answers under one guardrail and whether it fired on each prompt;
    ``predicted_norm``, log-likelihood scoring's length-normalised answers (None for letters)."""

    predicted: torch.Tensor
    fired: torch.Tensor
    predicted_norm: torch.Tensor | None = None


def fired_rows(intervention: Intervention, rows: int) -> torch.Tensor:
    fired = intervention.fired
    if fired is None or fired.shape != (rows,):
        raise RuntimeError(
            f"intervention {type(intervention).__name__} did not report `fired` for its {rows} rows"
        )
    return fired.detach().cpu().bool()


def argmax(probs: torch.Tensor) -> torch.Tensor:
    """Index of the largest probability; on ties the first, as the reference (and torch)."""
    return probs.argmax(dim=-1)
