"""Log-likelihood (cloze) MCQ scoring, as lm-eval's ``multiple_choice`` tasks, split at the hook.

Each question is four rows, its context followed by one option. The rows run to the SAE's hook
once; the unedited residual gives the unguarded log-likelihoods, and each guardrail decides on
the context and carries its decision over the option's tokens (``decide_on_prefix``), as it
carries a prompt's decision over generated tokens. Only the rows whose residual a guardrail
changed run the remaining blocks again. The final norm and unembedding touch only the positions
that predict an option's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dsg.api.interfaces import Intervention, PrefixDecidingIntervention
from dsg.core.errors import UserError
from dsg.engine.backends.base import ModelBackend
from dsg.scoring.cloze import ClozeItem, cloze_item
from dsg.scoring.rows import Batch, Outcome, batches, fired_rows, hook_split, pad_id

OPTIONS = 4


def require_prefix(intervention: Intervention, strategy: str) -> PrefixDecidingIntervention:
    """The intervention, if it can decide on a context and carry the decision over the options."""
    if not isinstance(intervention, PrefixDecidingIntervention):
        raise UserError(
            f"strategy {strategy!r} cannot be scored by log-likelihood: its intervention has no "
            "decide_on_prefix; use --scoring letter"
        )
    return intervention


def choose(loglik: torch.Tensor) -> torch.Tensor:
    """``acc``'s answer: the most likely option, the first on ties."""
    return loglik.argmax(dim=-1)


def choose_norm(loglik: torch.Tensor, items: Sequence[ClozeItem]) -> torch.Tensor:
    """``acc_norm``'s answer: the largest log-likelihood per character of the choice."""
    lengths = torch.tensor([item.lengths for item in items], dtype=loglik.dtype)
    lengths = lengths.reshape(-1, OPTIONS)
    return (loglik / lengths).argmax(dim=-1)


class ClozeScorer:
    """A model backend split at the hook, scoring each option by its summed log-probability."""

    def __init__(self, backend: ModelBackend, hook_name: str, batch_size: int) -> None:
        self.backend = backend
        self.split = hook_split(backend, hook_name)
        self.batch_size = batch_size
        self.tokenizer = backend.tokenizer
        self.pad_id = pad_id(self.tokenizer)
        self.on_rows: Callable[[int], None] | None = None
        """Called with the number of option rows in each finished batch (progress display)."""

    def encode(
        self, context: str, continuations: Sequence[str], choices: Sequence[str]
    ) -> ClozeItem:
        return cloze_item(self.tokenizer, context, continuations, choices, self.backend.n_ctx)

    def logliks(self, items: Sequence[ClozeItem]) -> torch.Tensor:
        """``[Q, 4]`` log-likelihoods of the unedited model (float64)."""
        return self.sweep(items, [])[0]

    @torch.inference_mode()
    def sweep(
        self,
        items: Sequence[ClozeItem],
        interventions: Sequence[PrefixDecidingIntervention],
        baseline: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[Outcome]]:
        """Unguarded log-likelihoods ``[Q, 4]`` and the answers under each intervention, from
        one pass over the rows. ``baseline``, the unguarded log-likelihoods when known, saves
        their compute."""
        n = len(items)
        if any(len(item.continuations) != OPTIONS for item in items):
            raise UserError(f"log-likelihood scoring needs exactly {OPTIONS} choices a question")
        ids = [item.row(option) for item in items for option in range(OPTIONS)]
        base = baseline.clone() if baseline is not None else torch.empty(n, OPTIONS)
        base = base.double()
        guarded = [torch.empty(n, OPTIONS, dtype=torch.float64) for _ in interventions]
        fired = [torch.zeros(n, dtype=torch.bool) for _ in interventions]
        for batch in batches(ids, self.batch_size, self.pad_id):
            question, option = batch.rows // OPTIONS, batch.rows % OPTIONS
            resid = self.backend.to_hook(batch.tokens, batch.mask, self.split)
            everything = torch.arange(len(batch.rows))
            if baseline is None:
                base[question, option] = self._score(items, resid, batch, everything)
            context = self._context_mask(items, batch).to(resid.device)
            mask = batch.mask.to(resid.device)
            for k, intervention in enumerate(interventions):
                edited = intervention.decide_on_prefix(resid.clone(), context, mask)
                row_fired = fired_rows(intervention, len(batch.rows))
                changed = (edited != resid).flatten(1).any(dim=1).cpu()
                values = base[question, option].clone()
                if bool(changed.any()):
                    sel = changed.nonzero().flatten()
                    values[sel] = self._score(items, edited, batch, sel)
                guarded[k][question, option] = values
                fired[k][question[row_fired]] = True
            if self.on_rows is not None:
                self.on_rows(len(batch.rows))
        outcomes = [
            Outcome(choose(ll), f, choose_norm(ll, items))
            for ll, f in zip(guarded, fired, strict=True)
        ]
        return base, outcomes

    @staticmethod
    def _context_mask(items: Sequence[ClozeItem], batch: Batch) -> torch.Tensor:
        """``[B, T]``: True on each row's context, where the guardrail decides."""
        lengths = torch.tensor([len(items[int(r) // OPTIONS].context) for r in batch.rows])
        return torch.arange(batch.tokens.shape[1])[None, :] < lengths[:, None]

    def _score(
        self, items: Sequence[ClozeItem], resid: torch.Tensor, batch: Batch, sel: torch.Tensor
    ) -> torch.Tensor:
        """Summed log-probabilities of the selected rows' continuations ``[len(sel)]``: the
        blocks after the hook on those rows, the logits only where a continuation token is
        predicted."""
        owner: list[int] = []
        positions: list[int] = []
        targets: list[int] = []
        for local, r in enumerate(batch.rows[sel].tolist()):
            item = items[r // OPTIONS]
            continuation = item.continuations[r % OPTIONS]
            start = len(item.context) - 1
            owner += [local] * len(continuation)
            positions += range(start, start + len(continuation))
            targets += continuation
        device = resid.device
        on_device = sel.to(device)
        whose = torch.tensor(owner, device=device)
        logits = self.backend.from_hook(
            resid[on_device],
            batch.mask[sel].to(device),
            torch.tensor(positions, device=device),
            self.split,
            rows=whose,
        )
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        total = torch.zeros(len(sel), dtype=torch.float64, device=device)
        return total.index_add_(0, whose, picked.double()).cpu()
