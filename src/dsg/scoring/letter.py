"""Batched MCQ scoring that computes logits only where the answer is read.

The model is split at the SAE's hook: blocks before it run once per prompt, then the unedited
residual gives the baseline answer and each guardrail edits a copy of it. Only rows where a
guardrail fired are run through the remaining blocks again; the others keep the baseline
answer. The final norm, unembedding and softcap touch only the last real position of each row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dsg.api.interfaces import Intervention
from dsg.api.prompts import LETTERS, answer_token_ids
from dsg.engine.backends.base import ModelBackend
from dsg.scoring.rows import (
    Batch,
    Outcome,
    argmax,
    batches,
    encode,
    fired_rows,
    hook_split,
    pad_id,
)


class Scorer:
    """A model backend split at the hook, scoring four-letter answers."""

    def __init__(self, backend: ModelBackend, hook_name: str, batch_size: int) -> None:
        self.backend = backend
        self.split = hook_split(backend, hook_name)
        self.batch_size = batch_size
        tokenizer = backend.tokenizer
        self.answer_ids = answer_token_ids(tokenizer)
        self.pad_id = pad_id(tokenizer)
        self.tokenizer = tokenizer
        self.on_rows: Callable[[int], None] | None = None
        """Called with the number of prompts in each finished batch (progress display)."""
        self.share_prefixes = True
        """Compute a question's shared prompt prefix once (on backends that can)."""

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return encode(self.tokenizer, texts, self.backend.n_ctx)

    def to_hook(self, batch: Batch) -> torch.Tensor:
        """The residual stream at the hook: the input of block ``split``."""
        return self.backend.to_hook(batch.tokens, batch.mask, self.split)

    def from_hook(
        self, resid: torch.Tensor, mask: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """``[B, 4]`` answer probabilities: max of P(X) and P(" X") from a softmax over the whole
        vocabulary at each row's last real token, with the model's final-logit softcap."""
        return self.answer_probabilities(
            self.backend.from_hook(resid, mask.to(resid.device), last, self.split)
        )

    def answer_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, 4]``: max of P(X) and P(" X"), softmax over the whole vocabulary."""
        probs = torch.softmax(logits.float(), dim=-1)
        ids = self.answer_ids.to(probs.device)
        return probs[:, ids].amax(dim=1)

    def _done(self, batch: Batch) -> None:
        if self.on_rows is not None:
            self.on_rows(len(batch.rows))

    @torch.inference_mode()
    def probabilities(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[N, 4]`` answer probabilities of the unedited model, in prompt order."""
        out = torch.empty(len(ids), len(LETTERS), dtype=torch.float32)
        for batch in batches(ids, self.batch_size, self.pad_id):
            out[batch.rows] = self.from_hook(self.to_hook(batch), batch.mask, batch.last).cpu()
            self._done(batch)
        return out

    def predict(self, ids: Sequence[Sequence[int]], group: int = 1) -> torch.Tensor:
        """Answer index per prompt (argmax, first index on ties). ``group``: runs of that many
        consecutive prompts share a prefix, computed once per run where the backend can."""
        share = getattr(self.backend, "prefix_shared_logits", None)
        if group < 2 or share is None or not self.share_prefixes:
            return argmax(self.probabilities(ids))
        return self._predict_shared(ids, group, share)

    @torch.inference_mode()
    def _predict_shared(
        self, ids: Sequence[Sequence[int]], group: int, share: Callable[..., torch.Tensor]
    ) -> torch.Tensor:
        out = torch.empty(len(ids), dtype=torch.long)
        for start in range(0, len(ids), group):
            rows = ids[start : start + group]
            cut = min(common_prefix_length(rows), min(len(row) for row in rows) - 1)
            logits = share(rows[0][:cut], [row[cut:] for row in rows], self.batch_size, self.pad_id)
            out[start : start + len(rows)] = argmax(self.answer_probabilities(logits).cpu())
            if self.on_rows is not None:
                self.on_rows(len(rows))
        return out

    @torch.inference_mode()
    def sweep(
        self,
        ids: Sequence[Sequence[int]],
        interventions: Sequence[Intervention],
        baseline: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Outcome]]:
        """Baseline answers and the answers under each intervention, from one pass over the
        prompts. ``baseline`` (answers of the unedited model), when known, saves its compute."""
        n = len(ids)
        base = baseline.clone() if baseline is not None else torch.empty(n, dtype=torch.long)
        outcomes = [
            Outcome(torch.empty(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool))
            for _ in interventions
        ]
        for batch in batches(ids, self.batch_size, self.pad_id):
            resid = self.to_hook(batch)
            mask = batch.mask.to(resid.device)
            if baseline is None:
                base[batch.rows] = argmax(self.from_hook(resid, mask, batch.last).cpu())
            for intervention, outcome in zip(interventions, outcomes, strict=True):
                edited = intervention(resid.clone(), mask)  # a strategy may edit in place
                fired = fired_rows(intervention, len(batch.rows))
                answers = base[batch.rows].clone()
                if bool(fired.any()):
                    sel = fired.nonzero().flatten()
                    on_device = sel.to(edited.device)
                    probs = self.from_hook(edited[on_device], mask[on_device], batch.last[sel])
                    answers[sel] = argmax(probs.cpu())
                outcome.predicted[batch.rows] = answers
                outcome.fired[batch.rows] = fired
            self._done(batch)
        return base, outcomes


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row has in common."""
    first = rows[0]
    length = min(len(row) for row in rows)
    for row in rows[1:]:
        length = next((i for i in range(length) if row[i] != first[i]), length)
    return length
