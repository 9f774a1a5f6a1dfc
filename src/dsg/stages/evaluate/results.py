"""What the evaluation produces, apart from the code that produces it: one point of the sweep,
one set's prompts, one configuration's result. The report, the held-out score, relearning and the
lm-eval section read these without importing the evaluation itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dsg.api.interfaces import EvalSet
    from dsg.stages.evaluate.score import Count


@dataclass(frozen=True)
class Config:
    """One point of the sweep; ``threshold`` is None for strategies that ignore it, ``params``
    the other calibrated parameters of the gate (``windowed``: its window), as sorted pairs."""

    strategy: str
    ratio_percentile: float
    n_features: int
    multiplier: float
    threshold: float | None
    features: tuple[int, ...]
    params: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> dict[str, Any]:
        described = {
            "strategy": self.strategy,
            "ratio_percentile": self.ratio_percentile,
            "n_features": self.n_features,
            "multiplier": self.multiplier,
            "threshold": self.threshold,
            "features": list(self.features),
        }
        if self.params:  # absent for dynamic and static, whose keys stay as they were
            described["params"] = dict(self.params)
        return described


@dataclass(frozen=True)
class SetPrompts:
    """The questions of one set chosen by the subset, as the scoring mode's prompts (token ids in
    the letter format, a ``ClozeItem`` a question under log-likelihood scoring) with their gold
    answers."""

    eval_set: EvalSet
    question_ids: list[int]
    items: list[Any]
    gold: torch.Tensor

    @property
    def name(self) -> str:
        return self.eval_set.name


@dataclass(frozen=True)
class ConfigResult:
    """Per set: right answers, questions, prompts on which the guardrail fired, and the answer
    given to each prompt (in the set's prompt order); ``norm_counts``, the right answers by
    ``acc_norm`` (log-likelihood scoring only)."""

    config: Config
    counts: dict[str, Count]
    fired: dict[str, int]
    predicted: dict[str, list[int]]
    norm_counts: dict[str, Count] = field(default_factory=dict)
