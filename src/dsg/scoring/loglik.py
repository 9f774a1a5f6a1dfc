"""Log-likelihood (cloze) MCQ scoring, as lm-eval's ``multiple_choice`` tasks, split at the hook.

Each question is one packed row (its context once, then its four options, each attending to
the context and itself: :mod:`dsg.scoring.cloze_batches`) on a backend that can run one, else
four rows, its context followed by one option. The rows run to the SAE's hook once; the
unedited residual gives the unguarded log-likelihoods, and each guardrail decides on the
context and carries its decision over the options' tokens (``decide_on_prefix``), as it carries
a prompt's decision over generated tokens. Only the rows whose residual a guardrail changed run
the remaining blocks again. The final norm and unembedding touch only the positions that
predict an option's tokens.

Packing is exact for an intervention that edits each position after the context from the row's
decision and that position's own residual: a runtime ``Guardrail`` whose gate keeps the prompt's
decision or clamps every hit (every built-in strategy). A sweep with any other intervention
(one that might, say, count the positions after the prompt) scores one row per option.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from dsg.api.interfaces import Intervention, PrefixDecidingIntervention
from dsg.core.errors import UserError
from dsg.engine.backends.base import ModelBackend, PackingBackend
from dsg.scoring.cloze import ClozeItem, cloze_item
from dsg.scoring.cloze_batches import ClozeBatch, option_batches, packed_batches
from dsg.scoring.rows import Outcome, fired_rows, hook_split, pad_id
from dsg_runtime.guardrail import Guardrail, carries_by_position

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


def packs(intervention: PrefixDecidingIntervention) -> bool:
    """Whether packed rows give this intervention's own answers: a runtime ``Guardrail`` whose
    gate carries the prompt's decision to each later position alone (it keeps the decision, or
    it is the static clamp's, which clamps every hit)."""
    return isinstance(intervention, Guardrail) and carries_by_position(intervention.gate)


class ClozeScorer:
    """A model backend split at the hook, scoring each option by its summed log-probability.
    ``packed`` (default: whether the backend can) runs a question's options in one row, in
    every sweep whose interventions all allow it (:func:`packs`)."""

    def __init__(
        self,
        backend: ModelBackend,
        hook_name: str,
        batch_size: int,
        *,
        packed: bool | None = None,
    ) -> None:
        if packed and not isinstance(backend, PackingBackend):
            raise ValueError(f"the {backend.name} backend cannot run packed rows")
        self.backend = backend
        self.split = hook_split(backend, hook_name)
        self.batch_size = batch_size
        self.packer: PackingBackend | None = None
        """The backend, when the options of a question run packed in one row."""
        if isinstance(backend, PackingBackend) and packed is not False:
            self.packer = backend
        self.tokenizer = backend.tokenizer
        self.pad_id = pad_id(self.tokenizer)
        self.on_rows: Callable[[int], None] | None = None
        """Called with the number of options scored in each finished batch (progress
        display)."""

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
        base = baseline.clone() if baseline is not None else torch.empty(n, OPTIONS)
        base = base.double()
        guarded = [torch.empty(n, OPTIONS, dtype=torch.float64) for _ in interventions]
        fired = [torch.zeros(n, dtype=torch.bool) for _ in interventions]
        packed = self.packer is not None and all(packs(i) for i in interventions)
        for batch in self._batches(items, packed):
            question = torch.tensor([read.question for read in batch.reads])
            option = torch.tensor([read.option for read in batch.reads])
            resid = self._to_hook(batch)
            everything = torch.arange(len(batch.questions))
            if baseline is None:
                base[question, option] = self._score(resid, batch, everything)
            context = batch.context.to(resid.device)
            mask = batch.mask.to(resid.device)
            for k, intervention in enumerate(interventions):
                edited = intervention.decide_on_prefix(resid.clone(), context, mask)
                row_fired = fired_rows(intervention, len(batch.questions))
                changed = (edited != resid).flatten(1).any(dim=1).cpu()
                values = base[question, option].clone()
                if bool(changed.any()):
                    sel = changed.nonzero().flatten()
                    redone = torch.tensor([bool(changed[read.row]) for read in batch.reads])
                    values[redone] = self._score(edited, batch, sel)
                guarded[k][question, option] = values
                fired[k][batch.questions[row_fired]] = True
            if self.on_rows is not None:
                self.on_rows(len(batch.reads))
        outcomes = [
            Outcome(choose(ll), f, choose_norm(ll, items))
            for ll, f in zip(guarded, fired, strict=True)
        ]
        return base, outcomes

    def _batches(self, items: Sequence[ClozeItem], packed: bool) -> Iterator[ClozeBatch]:
        if packed:
            return packed_batches(items, self.batch_size, self.pad_id)
        return option_batches(items, OPTIONS, self.batch_size, self.pad_id)

    def _to_hook(self, batch: ClozeBatch) -> torch.Tensor:
        if batch.positions is None or batch.allowed is None or self.packer is None:
            return self.backend.to_hook(batch.tokens, batch.mask, self.split)
        return self.packer.to_hook_packed(batch.tokens, batch.positions, batch.allowed, self.split)

    def _score(self, resid: torch.Tensor, batch: ClozeBatch, sel: torch.Tensor) -> torch.Tensor:
        """Summed log-probabilities of the options read from the selected rows (in the order
        of ``batch.reads``): the blocks after the hook on those rows, the logits only where an
        option's token is predicted."""
        local = {int(row): i for i, row in enumerate(sel.tolist())}
        owner: list[int] = []
        positions: list[int] = []
        targets: list[int] = []
        whose_read: list[int] = []
        reads = [read for read in batch.reads if read.row in local]
        for r, read in enumerate(reads):
            owner += [local[read.row]] * len(read.targets)
            positions += read.positions
            targets += read.targets
            whose_read += [r] * len(read.targets)
        device = resid.device
        on_device = sel.to(device)
        rows = torch.tensor(owner, device=device)
        read_at = torch.tensor(positions, device=device)
        if batch.positions is None or batch.allowed is None or self.packer is None:
            logits = self.backend.from_hook(
                resid[on_device], batch.mask[sel].to(device), read_at, self.split, rows=rows
            )
        else:
            logits = self.packer.from_hook_packed(
                resid[on_device],
                batch.positions[sel],
                batch.allowed[sel],
                read_at,
                self.split,
                rows,
            )
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        total = torch.zeros(len(reads), dtype=torch.float64, device=device)
        return total.index_add_(0, torch.tensor(whose_read, device=device), picked.double()).cpu()
