"""What the ``relearn`` attack needs of a run: the forget documents feature selection never saw,
as the statistics' rows; a copy of the model to fine-tune; and its training loop (next-token
loss, AdamW, one step per batch, rows in a seeded order that is the same at every learning
rate). The attack itself (``plugins/dsg_attacks/relearn.py``) scores the copy after every epoch
through the evaluate engine, with the guardrails calibrated on the original model
(docs/relearn.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError
from dsg.stages.corpus import load_documents, tokenize_and_concat, unsampled_forget

if TYPE_CHECKING:
    import torch

    from dsg.engine.session import Session


def check_learning_rates(rates: Sequence[float]) -> list[float]:
    """Learning rates, each finite and above 0; a UserError names the first that is not."""
    if not rates:
        raise UserError("give at least one learning rate")
    for rate in rates:
        if not (math.isfinite(rate) and rate > 0):
            raise UserError(f"learning rate {rate!r} is not a finite number above 0")
    return [float(r) for r in rates]


def held_out_rows(session: Session, tokenizer: Any) -> tuple[int, torch.Tensor]:
    """The forget documents the statistics never read, as rows of ``seq_len`` tokens (the
    statistics' concat-and-chunk rows): the ``relearn_holdout`` documents, then those the
    seeded ``dataset_size`` sample left out. Their count and the rows."""
    s = session.settings
    documents = load_documents(session)
    docs = documents.held_out + unsampled_forget(documents.forget, s.dataset_size, s.seed)
    if not docs:
        raise UserError(
            f"all {len(documents.forget)} forget documents were used for feature selection, so "
            "none is left to relearn on; hold some out with --relearn-holdout PERCENT (e.g. 25)"
        )
    rows = tokenize_and_concat(tokenizer, docs, s.seq_len)
    if rows.shape[0] == 0:
        raise UserError(
            f"the {len(docs)} forget documents held out of feature selection make less than one "
            f"row of {s.seq_len} tokens; raise --relearn-holdout or lower seq_len"
        )
    return len(docs), rows


def copy_model(model: Any) -> Any:
    """A deep copy of the model's weights that shares its tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    return copy.deepcopy(model, memo={id(tokenizer): tokenizer})


def adamw(model: Any, rate: float) -> torch.optim.Optimizer:
    import torch

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return torch.optim.AdamW(model.parameters(), lr=rate)


def seeded_generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(seed)


def train_epoch(
    model: Any,
    optimizer: torch.optim.Optimizer,
    rows: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over the rows in a seeded order, one optimizer step per batch; the mean loss."""
    import torch

    order = torch.randperm(rows.shape[0], generator=generator)
    losses = []
    model.train()
    with torch.enable_grad():
        for start in range(0, len(order), batch_size):
            batch = rows[order[start : start + batch_size]].to(model.W_U.device)
            loss = model(batch, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    return sum(losses) / len(losses)
