"""The held-out score: the seeded split of the questions, and the configuration it chooses on a
hand-built table of answers."""

from __future__ import annotations

import random

import pytest
import torch
from tiny import tiny_questions

from dsg.api.interfaces import EvalSet, MCQuestion
from dsg.stages.evaluate.heldout import (
    SplitSets,
    in_selection_part,
    part_count,
    section,
    split_sets,
)
from dsg.stages.evaluate.results import Config, ConfigResult, SetPrompts
from dsg.stages.evaluate.score import Count, point, unlearning_score

QUESTIONS = tiny_questions("q", 400)


def test_split_is_a_function_of_the_question_and_the_seed() -> None:
    first = [in_selection_part(q, 0) for q in QUESTIONS]
    assert first == [in_selection_part(q, 0) for q in QUESTIONS]
    shuffled = list(QUESTIONS)
    random.Random(1).shuffle(shuffled)
    by_question = {q: in_selection_part(q, 0) for q in shuffled}
    assert [by_question[q] for q in QUESTIONS] == first  # the set's order plays no part
    assert 0.45 < sum(first) / len(first) < 0.55  # about half


def test_split_changes_with_the_seed() -> None:
    first = [in_selection_part(q, 0) for q in QUESTIONS]
    other = [in_selection_part(q, 1) for q in QUESTIONS]
    moved = sum(a != b for a, b in zip(first, other, strict=True))
    assert 0.4 < moved / len(QUESTIONS) < 0.6  # independent halves: about half move


def test_split_is_pinned() -> None:
    """Which questions are held out must not change between releases for the same seed."""
    q = MCQuestion("Which vex number is 0?", ("vex0", "vex1", "vex2", "vex3"), 0)
    assert [in_selection_part(q, seed) for seed in range(8)] == [1, 1, 0, 0, 1, 1, 1, 1]


def test_the_cut_lies_between_hash_bytes_127_and_128() -> None:
    """The selection part is the first byte of the hash in [0, 128): exactly half of its 256
    values. For this question seed 133 hashes to a first byte of 127 and seed 506 to 128."""
    q = MCQuestion("Which vex number is 0?", ("vex0", "vex1", "vex2", "vex3"), 0)
    assert in_selection_part(q, 133) and not in_selection_part(q, 506)


def test_split_sets_follows_each_set_s_question_ids() -> None:
    """Each set's gold and baseline answers in its prompt order, and its questions' parts looked
    up by the question ids the subset kept (not by prompt position)."""
    questions = tiny_questions("q", 8)
    prompts = [
        SetPrompts(
            EvalSet("t", "x", questions), [5, 0, 7], [[1], [2], [3]], torch.tensor([1, 0, 3])
        ),
        SetPrompts(EvalSet("s", "x", questions[:3]), [2, 1], [[4], [5]], torch.tensor([2, 1])),
    ]
    baselines = {"t": torch.tensor([1, 2, 3]), "s": torch.tensor([0, 1]), "u": torch.tensor([9])}
    split = split_sets(prompts, baselines, seed=4)
    assert split.gold == {"t": [1, 0, 3], "s": [2, 1]}
    assert split.baseline == {"t": [1, 2, 3], "s": [0, 1]}
    part = [in_selection_part(q, 4) for q in questions]
    assert split.selection == {"t": [part[5], part[0], part[7]], "s": [part[2], part[1]]}
    assert len(set(part)) == 2  # both parts occur among these questions


def test_part_count_counts_right_answers_where_the_mask_is_set() -> None:
    assert part_count([0, 1, 2, 3], [0, 1, 0, 3], [True, True, True, False]) == Count(2, 3)
    assert part_count([], [], []) == Count(0, 0)
    with pytest.raises(ValueError):  # answers of another prompt list: never silently cut
        part_count([0, 1], [0, 1, 2], [True, True, True])


SETS = ["t", "s"]
# Four questions per set, gold answer 0 everywhere; the first two are the selection part.
SELECTION = [True, True, False, False]


def results(*answers: tuple[list[int], list[int]]) -> list[ConfigResult]:
    """One configuration per (target answers, side-effect answers); 0 is right, 1 wrong."""
    return [
        ConfigResult(
            Config("dynamic", 90.0, i + 1, 500.0, 0.1, (i,)),
            {"t": Count(t.count(0), 4), "s": Count(s.count(0), 4)},
            {"t": 0, "s": 0},
            {"t": t, "s": s},
        )
        for i, (t, s) in enumerate(answers)
    ]


def split(side_baseline: list[int] | None = None) -> SplitSets:
    return SplitSets(
        gold={"t": [0] * 4, "s": [0] * 4},
        baseline={"t": [0] * 4, "s": side_baseline or [0] * 4},
        selection={"t": SELECTION, "s": SELECTION},
    )


RIGHT = [0, 0, 0, 0]


def test_chosen_on_selection_reported_on_the_rest() -> None:
    # A forgets the two selection questions only: selection 0/2, report 2/2, all 2/4.
    # B forgets the two report questions and one selection question: 1/2, 0/2, all 1/4.
    table = results(([1, 1, 0, 0], RIGHT), ([0, 1, 1, 1], RIGHT))
    found = section(split(), table, SETS, seed=3)
    assert found["chosen"] == 0  # A: lowest target accuracy on the selection part
    assert found["selection"]["target_accuracy"] == 0.0
    assert found["report"]["target_accuracy"] == 1.0  # A forgot nothing it was not picked for
    assert found["score"] == 0.0
    assert found["seed"] == 3
    assert found["questions"] == {
        "t": {"selection": 2, "report": 2},
        "s": {"selection": 2, "report": 2},
    }
    baseline = {"t": Count(4, 4), "s": Count(4, 4)}
    paper = unlearning_score([point(r.counts, baseline, SETS) for r in table])
    assert paper == pytest.approx(0.75)  # the paper's rule picks B on all four questions


def test_positive_score_and_per_set_on_the_report_part() -> None:
    table = results(([0, 0, 0, 0], RIGHT), ([1, 1, 1, 0], RIGHT))
    found = section(split(), table, SETS, seed=0)
    assert found["chosen"] == 1
    assert found["score"] == pytest.approx(0.5)
    assert found["report"]["per_set"] == {"t": 0.5, "s": 1.0}
    assert found["report"]["passes_gate"] and found["selection"]["passes_gate"]


def test_a_choice_that_breaks_the_gate_on_the_report_part_scores_0() -> None:
    # C forgets everything and keeps the side effects on the selection part, not on the rest.
    table = results(([1, 1, 1, 1], [0, 0, 1, 0]), ([1, 1, 0, 0], RIGHT))
    found = section(split(), table, SETS, seed=0)
    assert found["chosen"] == 0  # ties on selection at 0/2: the first in sweep order
    assert found["report"]["side_effect_accuracy"] == 0.5
    assert not found["report"]["passes_gate"]
    assert found["score"] == 0.0


def test_gate_is_relative_on_each_part() -> None:
    # The unguarded model gets the second side question wrong (selection 1/2, report 2/2).
    baseline = [0, 1, 0, 0]
    # X forgets all but keeps no side-effect answer; Y keeps the unguarded model's one of two,
    # which an absolute 0.99 gate would fail.
    table = results(([1, 1, 1, 1], [1, 1, 0, 0]), ([1, 0, 0, 1], [0, 1, 0, 0]))
    found = section(split(baseline), table, SETS, seed=0)
    assert found["chosen"] == 1
    assert found["selection"]["side_effect_accuracy"] == 0.5
    assert found["selection"]["baseline_side_effect_accuracy"] == 0.5
    assert found["report"]["baseline_side_effect_accuracy"] == 1.0
    assert found["score"] == pytest.approx(0.5)


def test_a_single_report_question_is_scored() -> None:
    # one target question in the report part (the fourth): the choice forgets it, score 1 - 0/1
    one_left = split_with({"t": [True, True, True, False]})
    found = section(one_left, results(([1, 1, 1, 1], RIGHT)), SETS, seed=0)
    assert found["questions"]["t"] == {"selection": 3, "report": 1}
    assert found["score"] == 1.0


def test_no_target_question_in_the_report_part_gives_no_score() -> None:
    found = section(split_with({"t": [True] * 4}), results(([1, 1, 1, 1], RIGHT)), SETS, seed=0)
    assert found["questions"]["t"] == {"selection": 4, "report": 0}
    assert found["chosen"] is None and found["report"] is None
    assert found["score"] is None and "report part" in found["no_score"]


def split_with(selection: dict[str, list[bool]]) -> SplitSets:
    base = split()
    return SplitSets(base.gold, base.baseline, {**base.selection, **selection})


def test_nothing_passes_on_the_selection_part() -> None:
    found = section(split(), results(([1, 1, 1, 1], [1, 0, 0, 0])), SETS, seed=0)
    assert found["chosen"] is None and found["score"] == 0.0
    assert found["selection"] is None and found["report"] is None
    assert found["no_score"] is None


@pytest.mark.parametrize(
    ("target_selection", "empty_part", "missing"),
    [
        ([False] * 4, "selection", "nothing to choose a configuration on"),
        ([True] * 4, "report", "nothing to measure it on"),
    ],
)
def test_a_part_without_a_target_question_gives_no_score(
    target_selection: list[bool], empty_part: str, missing: str
) -> None:
    """No target question on one side of the split: no configuration is chosen and the score is
    None with the reason, not a 0.0000 that reads as a measurement. The same answers with a
    split that has target questions on both sides do give a number."""
    table = results(([1, 1, 0, 0], RIGHT), ([0, 1, 1, 1], RIGHT))
    lopsided = SplitSets(
        gold={"t": [0] * 4, "s": [0] * 4},
        baseline={"t": [0] * 4, "s": [0] * 4},
        selection={"t": target_selection, "s": SELECTION},
    )
    found = section(lopsided, table, SETS, seed=7)
    assert found["score"] is None and found["chosen"] is None
    assert found["selection"] is None and found["report"] is None
    assert f"falls in the {empty_part} part (held-out seed 7)" in found["no_score"]
    assert "none of the target set 't''s 4 evaluated questions" in found["no_score"]
    assert found["no_score"].endswith(
        f"{missing}; evaluate more questions (--questions all) or pass another --heldout-seed"
    )
    assert found["questions"]["t"] == {
        "selection": sum(target_selection),
        "report": 4 - sum(target_selection),
    }
    assert section(split(), table, SETS, seed=7)["score"] == 0.0


def test_an_empty_target_set_gives_no_score() -> None:
    empty = SplitSets(
        gold={"t": [], "s": [0] * 4},
        baseline={"t": [], "s": [0] * 4},
        selection={"t": [], "s": SELECTION},
    )
    table = [
        ConfigResult(
            Config("dynamic", 90.0, 1, 500.0, 0.1, (0,)),
            {"t": Count(0, 0), "s": Count(4, 4)},
            {"t": 0, "s": 0},
            {"t": [], "s": RIGHT},
        )
    ]
    found = section(empty, table, SETS, seed=0)
    assert found["score"] is None
    assert found["no_score"] == "the target set 't' has no evaluated question"
