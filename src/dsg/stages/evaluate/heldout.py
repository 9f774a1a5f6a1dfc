"""The held-out score: a configuration chosen on one part of the questions, reported on the other.

The paper's score takes the lowest target accuracy over the configurations on the very questions
it reports, so the more configurations a sweep tries, the luckier its minimum. Here every
question set is split in two by a seeded hash of each question's content (stable whatever the
order of the set, the batch size or the device): the configuration is chosen by the same rule on
the *selection* part, and its accuracies are measured on the *report* part, which played no part
in choosing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsg.api.interfaces import MCQuestion
from dsg.core.artifacts import canonical_json
from dsg.stages.evaluate.score import Count, Point, best, point

if TYPE_CHECKING:
    import torch

    from dsg.stages.evaluate.results import ConfigResult, SetPrompts

PARTS = ("selection", "report")


def in_selection_part(question: MCQuestion, seed: int) -> bool:
    """Whether a question falls in the selection part: one bit of a hash of the seed and the
    question's content, so about half the questions do, and another seed gives another half."""
    payload = canonical_json([seed, question.question, list(question.choices), question.answer])
    return hashlib.sha256(payload.encode()).digest()[0] < 128


def part_count(predicted: Sequence[int], gold: Sequence[int], mask: Sequence[bool]) -> Count:
    """Right answers and questions among the prompts where ``mask`` is True."""
    rows = [p == g for p, g, keep in zip(predicted, gold, mask, strict=True) if keep]
    return Count(sum(rows), len(rows))


@dataclass(frozen=True)
class SplitSets:
    """Per set, in its prompt order: gold answers, the unguarded model's answers, and which
    prompts are in the selection part."""

    gold: dict[str, list[int]]
    baseline: dict[str, list[int]]
    selection: dict[str, list[bool]]

    def mask(self, name: str, part: str) -> list[bool]:
        chosen = self.selection[name]
        return chosen if part == "selection" else [not s for s in chosen]

    def counts(self, predicted: Mapping[str, Sequence[int]], part: str) -> dict[str, Count]:
        return {
            name: part_count(predicted[name], gold, self.mask(name, part))
            for name, gold in self.gold.items()
        }


def split_sets(
    prompts: Sequence[SetPrompts], baselines: Mapping[str, torch.Tensor], seed: int
) -> SplitSets:
    """The split of the evaluated questions of every set, with their gold and baseline answers."""
    return SplitSets(
        gold={p.name: p.gold.tolist() for p in prompts},
        baseline={p.name: baselines[p.name].tolist() for p in prompts},
        selection={
            p.name: [in_selection_part(p.eval_set.questions[i], seed) for i in p.question_ids]
            for p in prompts
        },
    )


def section(
    split: SplitSets, results: Sequence[ConfigResult], set_names: list[str], seed: int
) -> dict[str, Any]:
    """The report's ``heldout`` section; ``score`` in it is the held-out score.

    The chosen configuration is the paper's pick on the selection part. Its score is
    ``1 - target accuracy`` on the report part if it passes the side-effect gate there too
    (against the unguarded model on the same report questions), else 0. When a part holds no
    target question, nothing can be chosen or nothing measured: the score is None and
    ``no_score`` says why (otherwise it is None).
    """
    baseline = {part: split.counts(split.baseline, part) for part in PARTS}
    counts = {part: [split.counts(r.predicted, part) for r in results] for part in PARTS}
    points = {part: [point(c, baseline[part], set_names) for c in counts[part]] for part in PARTS}
    no_score = empty_target_part(baseline, set_names[0], seed)
    chosen = None if no_score else best(points["selection"])
    score: float | None = None if no_score else 0.0
    if chosen is not None:
        held = points["report"][chosen]
        if held.passes_gate:  # the report part holds target questions (no_score is None)
            score = 1.0 - held.target.correct / held.target.total
    return {
        "score": score,
        "no_score": no_score,
        "seed": seed,
        "questions": {
            name: {part: baseline[part][name].total for part in PARTS} for name in set_names
        },
        "chosen": chosen,
        **{
            part: None if chosen is None else _describe(points[part][chosen], counts[part][chosen])
            for part in PARTS
        },
    }


def empty_target_part(
    baseline: Mapping[str, Mapping[str, Count]], target: str, seed: int
) -> str | None:
    """Why the held-out score cannot be taken (a part of the split without a target question),
    or None when it can."""
    sizes = {part: baseline[part][target].total for part in PARTS}
    if not any(sizes.values()):
        return f"the target set {target!r} has no evaluated question"
    for part, role in (("selection", "choose a configuration on"), ("report", "measure it on")):
        if not sizes[part]:
            return (
                f"none of the target set {target!r}'s {sum(sizes.values())} evaluated questions "
                f"falls in the {part} part (held-out seed {seed}), so there is nothing to {role}; "
                "evaluate more questions (--questions all) or pass another --heldout-seed"
            )
    return None


def _describe(p: Point, per_set: Mapping[str, Count]) -> dict[str, Any]:
    """The chosen configuration on one part."""
    return {
        "target_accuracy": p.target.accuracy,
        "side_effect_accuracy": p.side_effects.accuracy,
        "baseline_side_effect_accuracy": p.side_baseline.accuracy,
        "passes_gate": p.passes_gate,
        "per_set": {name: c.accuracy for name, c in per_set.items()},
    }
