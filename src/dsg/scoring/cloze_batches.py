"""How cloze questions become batches: one row per option, or a question's four options packed
after one copy of its context.

A packed row is the context followed by each option's tokens (but the last, whose logit is not
needed); each option attends to the context and to its own earlier tokens only and sits at the
positions it would have alone, so the context runs once instead of four times and every option's
log-likelihood is the one its own row gives (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from dsg.scoring.cloze import ClozeItem
from dsg.scoring.rows import batches

CONTEXT = -1
"""The segment of a packed row's context; option ``o``'s tokens are segment ``o``."""
PADDING = -2


@dataclass(frozen=True)
class Read:
    """One option's log-likelihood: the logits at ``positions`` of batch row ``row`` predict
    ``targets``."""

    row: int
    question: int
    option: int
    positions: tuple[int, ...]
    targets: tuple[int, ...]


@dataclass(frozen=True)
class ClozeBatch:
    """Right-padded rows: ``mask`` their real tokens, ``context`` the positions where the
    guardrail decides, ``questions`` the question of each row; ``positions`` and ``allowed``
    (bool ``[B, T, T]``) only when the rows are packed."""

    tokens: torch.Tensor
    mask: torch.Tensor
    context: torch.Tensor
    questions: torch.Tensor
    reads: tuple[Read, ...]
    positions: torch.Tensor | None = None
    allowed: torch.Tensor | None = None


def option_batches(
    items: Sequence[ClozeItem], options: int, batch_size: int, pad_id: int
) -> Iterator[ClozeBatch]:
    """One row per (question, option): the context and the option but its last token."""
    ids = [item.row(option) for item in items for option in range(options)]
    for batch in batches(ids, batch_size, pad_id):
        rows = batch.rows.tolist()
        lengths = torch.tensor([len(items[r // options].context) for r in rows])
        context = torch.arange(batch.tokens.shape[1])[None, :] < lengths[:, None]
        reads = []
        for local, r in enumerate(rows):
            item, option = items[r // options], r % options
            continuation = item.continuations[option]
            start = len(item.context) - 1
            positions = tuple(range(start, start + len(continuation)))
            reads.append(Read(local, r // options, option, positions, continuation))
        questions = batch.rows // options
        yield ClozeBatch(batch.tokens, batch.mask, context, questions, tuple(reads))


def packed_batches(
    items: Sequence[ClozeItem], batch_size: int, pad_id: int
) -> Iterator[ClozeBatch]:
    """One packed row per question, longest first."""
    lengths = [packed_length(item) for item in items]
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], i))
    for begin in range(0, len(order), batch_size):
        chosen = order[begin : begin + batch_size]
        width = lengths[chosen[0]]
        tokens = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(chosen), width), dtype=torch.long)
        segments = torch.full((len(chosen), width), PADDING, dtype=torch.long)
        reads = []
        for local, q in enumerate(chosen):
            item = items[q]
            ids, places = [*item.context], [*range(len(item.context))]
            owners = [CONTEXT] * len(item.context)
            for option, continuation in enumerate(item.continuations):
                start = len(ids)
                body = continuation[:-1]
                ids += body
                places += range(len(item.context), len(item.context) + len(body))
                owners += [option] * len(body)
                read = (len(item.context) - 1, *range(start, start + len(body)))
                reads.append(Read(local, q, option, read, continuation))
            tokens[local, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            positions[local, : len(ids)] = torch.tensor(places, dtype=torch.long)
            segments[local, : len(ids)] = torch.tensor(owners, dtype=torch.long)
        mask = segments != PADDING
        yield ClozeBatch(
            tokens,
            mask,
            segments == CONTEXT,
            torch.tensor(chosen, dtype=torch.long),
            tuple(reads),
            positions,
            packed_allowed(positions, segments),
        )


def packed_length(item: ClozeItem) -> int:
    return len(item.context) + sum(len(c) - 1 for c in item.continuations)


def packed_allowed(positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``[B, T, T]``: query ``i`` attends key ``j`` when ``j`` is no later than ``i`` and is
    context or of ``i``'s own option; padding attends the first token only."""
    earlier = positions[:, None, :] <= positions[:, :, None]
    key, query = segments[:, None, :], segments[:, :, None]
    return earlier & ((key == CONTEXT) | (key == query)) & (key != PADDING)
