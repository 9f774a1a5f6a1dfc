"""The two ways ``dsg evaluate`` answers a question (``--scoring``), behind one face.

``letter``: P(A..D) after the lettered choices (the reference's format); ``loglikelihood``: each
choice's log-likelihood after the question, as lm-eval's ``multiple_choice`` tasks. A mode renders
a set's prompts, finds the question subsets, gives the unguarded answers and sweeps the
guardrails; the stage caches what they return, keyed by ``fmt_key`` (the mode and its format's
fingerprint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dsg.api.interfaces import ClozeCase, ClozeFormat, EvalSet, Intervention, PromptFormat
from dsg.api.prompts import (
    choose_cloze_format,
    choose_format,
    format_fingerprint,
    render_cloze,
    render_question,
)
from dsg.scoring.cloze import ClozeItem
from dsg.scoring.letter import Scorer
from dsg.scoring.loglik import ClozeScorer, choose, choose_norm, require_prefix
from dsg.scoring.rows import Outcome
from dsg.stages.evaluate import subsets
from dsg.stages.evaluate.results import SetPrompts

LETTER = "letter"
LOGLIKELIHOOD = "loglikelihood"


@dataclass(frozen=True)
class Baseline:
    """The unguarded model on one set: its answers (``acc``), its length-normalised answers
    (``acc_norm``, log-likelihood scoring only) and what the engine's sweep takes to skip the
    unguarded pass (the answers, or the log-likelihoods)."""

    predicted: torch.Tensor
    predicted_norm: torch.Tensor | None
    state: torch.Tensor

    def to_json(self) -> dict[str, Any]:
        if self.predicted_norm is None:
            return {"predicted": self.predicted.tolist()}
        return {
            "predicted": self.predicted.tolist(),
            "predicted_norm": self.predicted_norm.tolist(),
            "loglik": self.state.tolist(),
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> Baseline:
        predicted = torch.tensor(meta["predicted"], dtype=torch.long)
        if "loglik" not in meta:
            return cls(predicted, None, predicted)
        loglik = torch.tensor(meta["loglik"], dtype=torch.float64).reshape(-1, 4)
        return cls(predicted, torch.tensor(meta["predicted_norm"], dtype=torch.long), loglik)


class Mode(Protocol):
    """What the evaluate stage needs of a scoring mode."""

    name: str
    fmt_key: str
    scorer: Any
    """The engine, whose ``on_rows`` reports progress."""

    def prompts(self, eval_set: EvalSet, question_ids: list[int]) -> SetPrompts: ...

    def subsets(self, eval_set: EvalSet) -> dict[str, list[int]]: ...

    def baseline(self, prompts: SetPrompts) -> Baseline: ...

    def sweep(
        self, prompts: SetPrompts, interventions: Sequence[Intervention], baseline: Baseline
    ) -> list[Outcome]: ...

    def check(self, strategy: str, intervention: Intervention) -> None: ...


class LetterMode:
    """P(A..D) at the last token of a prompt that shows the lettered choices."""

    name = LETTER

    def __init__(self, scorer: Scorer, fmt: PromptFormat) -> None:
        self.scorer = scorer
        self.fmt = fmt
        self.fmt_key = format_fingerprint(fmt, scorer.tokenizer)

    def prompts(self, eval_set: EvalSet, question_ids: list[int]) -> SetPrompts:
        """Identity-order prompts for the chosen questions."""
        tokenizer = self.scorer.tokenizer
        rendered = [
            render_question(self.fmt, tokenizer, eval_set, eval_set.questions[i])
            for i in question_ids
        ]
        tokens = self.scorer.encode([text for text, _ in rendered])
        gold = torch.tensor([g for _, g in rendered], dtype=torch.long)
        return SetPrompts(eval_set, question_ids, tokens, gold)

    def subsets(self, eval_set: EvalSet) -> dict[str, list[int]]:
        scorer = self.scorer

        def predict(texts: list[str], group: int) -> list[int]:
            return [int(p) for p in scorer.predict(scorer.encode(texts), group).tolist()]

        return subsets.compute(predict, self.fmt, scorer.tokenizer, eval_set)

    def baseline(self, prompts: SetPrompts) -> Baseline:
        predicted = (
            self.scorer.predict(prompts.items)
            if prompts.items
            else torch.empty(0, dtype=torch.long)
        )
        return Baseline(predicted, None, predicted)

    def sweep(
        self, prompts: SetPrompts, interventions: Sequence[Intervention], baseline: Baseline
    ) -> list[Outcome]:
        return self.scorer.sweep(prompts.items, interventions, baseline.state)[1]

    def check(self, strategy: str, intervention: Intervention) -> None:
        """Every intervention can be scored by letters."""


class ClozeMode:
    """Each choice's summed log-probability after the question's context."""

    name = LOGLIKELIHOOD

    def __init__(self, scorer: ClozeScorer, fmt: ClozeFormat) -> None:
        self.scorer = scorer
        self.fmt = fmt
        layout = "/packed" if scorer.packer is not None else ""
        self.fmt_key = f"{LOGLIKELIHOOD}{layout}/{format_fingerprint(fmt, scorer.tokenizer)}"
        self.seen: dict[tuple[str, int], torch.Tensor] = {}
        """Unguarded log-likelihoods ``[4]`` by (set, question) from the subsets' pass: under
        log-likelihood scoring the baseline of the chosen questions is that same computation,
        so it is read back rather than run twice."""

    def _items(
        self, eval_set: EvalSet, question_ids: list[int], *, with_question: bool = True
    ) -> tuple[list[ClozeItem], torch.Tensor]:
        items, golds = [], []
        for i in question_ids:
            question = eval_set.questions[i]
            context, continuations, gold = render_cloze(
                self.fmt, self.scorer.tokenizer, eval_set, question, with_question=with_question
            )
            items.append(self.scorer.encode(context, continuations, question.choices))
            golds.append(gold)
        return items, torch.tensor(golds, dtype=torch.long)

    def prompts(self, eval_set: EvalSet, question_ids: list[int]) -> SetPrompts:
        items, gold = self._items(eval_set, question_ids)
        return SetPrompts(eval_set, question_ids, items, gold)

    def subsets(self, eval_set: EvalSet) -> dict[str, list[int]]:
        def known(indices: list[int], with_question: bool) -> list[int]:
            if not indices:
                return []
            items, gold = self._items(eval_set, indices, with_question=with_question)
            loglik = self.scorer.logliks(items)
            if with_question:
                self.seen.update(
                    {(eval_set.name, i): row for i, row in zip(indices, loglik, strict=True)}
                )
            right = choose(loglik) == gold
            return [i for i, ok in zip(indices, right.tolist(), strict=True) if ok]

        return subsets.from_known(known, eval_set)

    def baseline(self, prompts: SetPrompts) -> Baseline:
        keys = [(prompts.name, i) for i in prompts.question_ids]
        if not keys:
            loglik = torch.empty(0, 4, dtype=torch.float64)
        elif all(key in self.seen for key in keys):
            loglik = torch.stack([self.seen[key] for key in keys])
        else:
            loglik = self.scorer.logliks(prompts.items)
        return Baseline(choose(loglik), choose_norm(loglik, prompts.items), loglik)

    def sweep(
        self, prompts: SetPrompts, interventions: Sequence[Intervention], baseline: Baseline
    ) -> list[Outcome]:
        deciding = [require_prefix(i, type(i).__name__) for i in interventions]
        return self.scorer.sweep(prompts.items, deciding, baseline.state)[1]

    def check(self, strategy: str, intervention: Intervention) -> None:
        """Refuse, naming the strategy, an intervention that cannot decide on a context."""
        require_prefix(intervention, strategy)


def open_mode(name: str, backend: Any, hook_name: str, batch_size: int, case: Any) -> Mode:
    """The scoring mode ``name`` on a backend, with the case's format or dsg's default."""
    tokenizer = backend.tokenizer
    if name == LOGLIKELIHOOD:
        own = case.cloze_format() if isinstance(case, ClozeCase) else None
        scorer = ClozeScorer(backend, hook_name, batch_size)
        return ClozeMode(scorer, choose_cloze_format(own, tokenizer))
    letters = Scorer(backend, hook_name, batch_size)
    return LetterMode(letters, choose_format(case.prompt_format(), tokenizer))
