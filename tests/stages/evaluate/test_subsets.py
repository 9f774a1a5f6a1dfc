"""Question subsets, from scorers whose answers are known in advance."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg.api.interfaces import EvalSet, MCQuestion
from dsg.api.prompts import LETTERS, PlainFormat
from dsg.core.artifacts import RunDir
from dsg.stages.evaluate.subsets import PERMUTATIONS, compute, ensure, is_tricky


class Tok:
    bos_token = "<bos>"


QUESTIONS = (
    MCQuestion("Q0 known", ("a0", "b0", "c0", "d0"), 0),
    MCQuestion("Q1 unknown", ("a1", "b1", "c1", "d1"), 1),
    MCQuestion("Q2 guessable", ("a2", "b2", "c2", "d2"), 2),
    MCQuestion("Q3 known", ("a3", "b3", "Both A and B", "d3"), 3),
    MCQuestion("Q4 known", ("a4", "b4", "c4", "All of the above"), 3),
)
EVAL_SET = EvalSet("toy", "toys", QUESTIONS)
KNOWN = {"Q0 known", "Q2 guessable", "Q3 known", "Q4 known"}
GUESSABLE_ANSWER = "c2"


def shown_choices(text: str) -> list[str]:
    lines = text.removeprefix("<bos>").split("\n")
    return [line[3:] for line in lines if line[:3] in {f"{x}. " for x in LETTERS}]


def oracle(texts: list[str], group: int = 1) -> list[int]:
    """Right on known questions; without question text, right only on the guessable one;
    otherwise always "A"."""
    answers = []
    for text in texts:
        shown = shown_choices(text)
        question = next((q for q in QUESTIONS if q.question in text), None)
        if question is not None and question.question in KNOWN:
            answers.append(shown.index(question.choices[question.answer]))
        elif question is None and GUESSABLE_ANSWER in shown:
            answers.append(shown.index(GUESSABLE_ANSWER))
        else:
            answers.append(0)
    return answers


def test_permutations_are_lexicographic() -> None:
    assert len(PERMUTATIONS) == 24
    assert PERMUTATIONS[0] == (0, 1, 2, 3) and PERMUTATIONS[1] == (0, 1, 3, 2)
    assert PERMUTATIONS[-1] == (3, 2, 1, 0)
    assert list(PERMUTATIONS) == sorted(PERMUTATIONS)


def test_tricky_choices() -> None:
    def q(*choices: str) -> MCQuestion:
        return MCQuestion("q", (*choices, "x", "y")[:4], 0)

    for tricky in ("Both A and B", "A and C", "B & D", "Both C & A", "All of the above"):
        assert is_tricky(q(tricky, "z")), tricky
    for plain in ("Both A and E", "all of the above", "A and B.", "Both A and B and C", "AB"):
        assert not is_tricky(q(plain, "z")), plain


def test_subsets_from_a_known_scorer() -> None:
    subsets = compute(oracle, PlainFormat(), Tok(), EVAL_SET)
    assert subsets == {
        "correct": [0, 2, 3, 4],
        "correct-iff-question": [0, 3, 4],
        "correct-no-tricks": [0, 2],
        "all": [0, 1, 2, 3, 4],
    }


def test_always_a_knows_nothing() -> None:
    calls: list[int] = []

    def always_a(texts: list[str], group: int = 1) -> list[int]:
        calls.append(len(texts))
        return [0] * len(texts)

    subsets = compute(always_a, PlainFormat(), Tok(), EVAL_SET)
    assert subsets["correct"] == subsets["correct-iff-question"] == []
    assert subsets["correct-no-tricks"] == []
    assert subsets["all"] == [0, 1, 2, 3, 4]
    # Only Q0 (gold "A") survives the identity order; it fails in the last round. No
    # choices-only prompts: nothing was correct.
    assert calls == [5, 3, 20]


def test_prompts_only_for_questions_still_in_the_running() -> None:
    sizes: list[int] = []

    def counting(texts: list[str], group: int = 1) -> list[int]:
        sizes.append(len(texts))
        return oracle(texts)

    compute(counting, PlainFormat(), Tok(), EVAL_SET)
    # With the question: Q1 falls at the identity order, the four others go all the way.
    # Without: Q0 and Q2 survive the identity order (gold "A" and the guessable one).
    assert sizes == [5, 4 * 3, 4 * 20, 4, 2 * 3, 2 * 20]


def test_subsets_are_cached_per_model_format_and_data(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    calls: list[int] = []

    def counting(texts: list[str], group: int = 1) -> list[int]:
        calls.append(1)
        return oracle(texts)

    def find(eval_set: EvalSet = EVAL_SET):
        return lambda: compute(counting, PlainFormat(), Tok(), eval_set)

    key = {"model": "m1", "dtype": "float32"}
    first = ensure(run_dir, key, "plain:1", EVAL_SET, find())
    n = len(calls)
    assert ensure(run_dir, key, "plain:1", EVAL_SET, find()) == first
    assert len(calls) == n
    ensure(run_dir, {**key, "dtype": "bfloat16"}, "plain:1", EVAL_SET, find())
    assert len(calls) == 2 * n
    ensure(run_dir, key, "plain:2", EVAL_SET, find())
    assert len(calls) == 3 * n
    changed = EvalSet("toy", "toys", QUESTIONS[:4])
    ensure(run_dir, key, "plain:1", changed, find(changed))
    assert len(calls) == 4 * n
    ensure(run_dir, key, "plain:1", EVAL_SET, find(), force=True)
    assert len(calls) == 5 * n


@pytest.mark.parametrize("name", ["correct", "correct-iff-question", "correct-no-tricks", "all"])
def test_every_subset_name_is_produced(name: str) -> None:
    assert name in compute(oracle, PlainFormat(), Tok(), EVAL_SET)


def test_rounds_give_the_exhaustive_answer() -> None:
    """Dropping a question at its first wrong order must not change any subset."""
    import hashlib

    from dsg.api.prompts import render_question

    questions = tuple(
        MCQuestion(f"Q{i} known", (f"a{i}", f"b{i}", f"c{i}", f"d{i}"), i % 4) for i in range(40)
    )
    eval_set = EvalSet("many", "things", questions)

    def flaky(texts: list[str], group: int = 1) -> list[int]:
        """Right on known questions, except on about one prompt in 60."""
        answers = []
        for text, right in zip(texts, oracle_many(texts, questions), strict=True):
            wrong = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 60 == 0
            answers.append((right + 1) % 4 if wrong else right)
        return answers

    exhaustive = []
    for i, q in enumerate(questions):
        rendered = [render_question(PlainFormat(), Tok(), eval_set, q, o) for o in PERMUTATIONS]
        predicted = flaky([text for text, _ in rendered])
        if all(p == gold for p, (_, gold) in zip(predicted, rendered, strict=True)):
            exhaustive.append(i)
    found = compute(flaky, PlainFormat(), Tok(), eval_set)["correct"]
    assert found == exhaustive
    assert 0 < len(found) < len(questions)


def oracle_many(texts: list[str], questions: tuple[MCQuestion, ...]) -> list[int]:
    answers = []
    for text in texts:
        shown = shown_choices(text)
        question = next((q for q in questions if q.question + "\n" in text), None)
        answers.append(shown.index(question.choices[question.answer]) if question else 0)
    return answers
