"""Cloze items as token ids: a context and one continuation per choice, split as lm-eval splits
them, so that log-likelihoods here and in lm-eval read the same tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsg.core.errors import UserError


@dataclass(frozen=True)
class ClozeItem:
    """One question: its context's ids, each choice's continuation ids, and each choice's length
    in characters (``acc_norm`` divides by it, as lm-eval divides by ``len(choice)``)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...]

    def row(self, option: int) -> list[int]:
        """What the model reads for one option: the context and the continuation but its last
        token (no logit after it is needed)."""
        return [*self.context, *self.continuations[option][:-1]]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: the context's trailing whitespace moves to the continuation, the two are
    encoded whole and cut at the length of the context's own encoding. No special tokens are
    added: a rendered context carries its own BOS."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    head = tokenizer.encode(context, add_special_tokens=False)
    return head, whole[len(head) :]


def cloze_item(
    tokenizer: Any, context: str, continuations: Sequence[str], choices: Sequence[str], n_ctx: int
) -> ClozeItem:
    """A question's token ids; an empty context or continuation, or a row beyond the model's
    context, is a UserError."""
    pairs = [encode_pair(tokenizer, context, c) for c in continuations]
    head = pairs[0][0]
    if not head:
        raise UserError(f"a cloze context renders to no tokens: {context!r}")
    if any(not tail for _, tail in pairs):
        raise UserError(f"a choice renders to no tokens after its context: {list(continuations)}")
    longest = max(len(head) + len(tail) for _, tail in pairs)
    if longest > n_ctx:
        raise UserError(
            f"a cloze prompt is {longest} tokens long, beyond the model's context of {n_ctx}"
        )
    if any(not choice for choice in choices):
        raise UserError(
            f"a question has an empty choice, which acc_norm cannot divide by: {choices}"
        )
    return ClozeItem(
        tuple(head), tuple(tuple(tail) for _, tail in pairs), tuple(len(c) for c in choices)
    )
