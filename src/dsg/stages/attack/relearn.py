"""What a relearning attack needs of a run (:meth:`AttackTarget.held_out_forget` and
:meth:`AttackTarget.trainable_model`): the forget documents feature selection never saw, as the
statistics' rows, and a copy of the model to fine-tune. The ``relearn`` attack
(``plugins/dsg_attacks/relearn.py``) trains the copy and scores it (docs/relearn.md).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError
from dsg.stages.corpus import load_documents, tokenize_and_concat, unsampled_forget

if TYPE_CHECKING:
    import torch

    from dsg.engine.session import Session


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
