"""Question subsets: which questions the clean model knows robustly.

``correct`` holds the questions answered right: in the letter format under all 24 answer orders,
under log-likelihood scoring in the set's one order (an option's log-likelihood does not depend
on where the others stand); ``correct-iff-question`` drops those also answered right (so) without
the question text;
``correct-no-tricks`` drops questions with "A and B"-style or "All of the above" choices;
``all`` is every question. Each list is in ascending order. The reference names the
no-tricks subset inconsistently (so it can never be selected); here it works.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

from dsg.api.interfaces import EvalSet, MCQuestion, PromptFormat
from dsg.api.prompts import render_question
from dsg.core.artifacts import (
    META_FILE,
    RunDir,
    artifact_key,
    canonical_json,
    fingerprint_texts,
    read_json,
)

STAGE = "subsets"
VERSION = 1
PERMUTATIONS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(4)))
ROUNDS = (PERMUTATIONS[:1], PERMUTATIONS[1:4], PERMUTATIONS[4:])
TRICK_CHOICE = re.compile(r"^(Both )?(A|B|C|D) (and|&) (A|B|C|D)$")
ALL_OF_THE_ABOVE = "All of the above"

Predict = Callable[[list[str], int], Sequence[int]]
"""Prompt texts and the number of consecutive prompts that render one question (they share a
prefix a scorer may compute once) in, predicted answer index per prompt out."""


def is_tricky(question: MCQuestion) -> bool:
    """A choice that refers to other choices, so a reordering changes its meaning."""
    return any(TRICK_CHOICE.fullmatch(c) or c == ALL_OF_THE_ABOVE for c in question.choices)


def eval_set_fingerprint(eval_set: EvalSet) -> str:
    """A content hash of a set: its name, subject and every question."""
    rows = [canonical_json([eval_set.name, eval_set.subject])]
    rows += [canonical_json([q.question, list(q.choices), q.answer]) for q in eval_set.questions]
    return fingerprint_texts(rows)


def all_orders_right(
    predict: Predict,
    fmt: PromptFormat,
    tokenizer: Any,
    eval_set: EvalSet,
    indices: Sequence[int],
    *,
    with_question: bool,
) -> list[int]:
    """The questions among ``indices`` answered right under every one of the 24 orders.

    The orders are tried in rounds (the identity, then 3 more, then the other 20) and a
    question is dropped at its first wrong answer: the result is the same, and questions the
    model does not know cost one prompt instead of 24.
    """
    alive = list(indices)
    for orders in ROUNDS:
        texts: list[str] = []
        golds: list[int] = []
        for i in alive:
            for order in orders:
                text, gold = render_question(
                    fmt,
                    tokenizer,
                    eval_set,
                    eval_set.questions[i],
                    order,
                    with_question=with_question,
                )
                texts.append(text)
                golds.append(gold)
        answers = predict(texts, len(orders)) if texts else []
        right = [int(p) == g for p, g in zip(answers, golds, strict=True)]
        per = len(orders)
        alive = [i for k, i in enumerate(alive) if all(right[k * per : (k + 1) * per])]
    return alive


Known = Callable[[list[int], bool], list[int]]
"""Question indices and whether the prompts show the question text in, the indices of those the
clean model answers right out."""


def from_known(known: Known, eval_set: EvalSet) -> dict[str, list[int]]:
    """All four subsets of one set. The prompts without the question are scored for ``correct``
    questions only: no other question can reach ``correct-iff-question``."""
    everything = list(range(len(eval_set.questions)))
    correct = known(everything, True)
    guessable = set(known(correct, False))
    return {
        "correct": correct,
        "correct-iff-question": [i for i in correct if i not in guessable],
        "correct-no-tricks": [i for i in correct if not is_tricky(eval_set.questions[i])],
        "all": everything,
    }


def compute(
    predict: Predict, fmt: PromptFormat, tokenizer: Any, eval_set: EvalSet
) -> dict[str, list[int]]:
    """The letter format's subsets: a question is known when answered right under every order."""

    def known(indices: list[int], with_question: bool) -> list[int]:
        return all_orders_right(
            predict, fmt, tokenizer, eval_set, indices, with_question=with_question
        )

    return from_known(known, eval_set)


def ensure(
    run_dir: RunDir,
    model_key: dict[str, Any],
    fmt_key: str,
    eval_set: EvalSet,
    find: Callable[[], dict[str, list[int]]],
    *,
    force: bool = False,
) -> dict[str, list[int]]:
    """The cached subsets of ``eval_set`` for this model and prompt format, found by ``find``
    if absent.

    ``model_key`` names the model (fingerprint and dtype); ``fmt_key`` the scoring mode and its
    prompt format.
    """
    inputs = {
        **model_key,
        "format": fmt_key,
        "set": eval_set.name,
        "set_fingerprint": eval_set_fingerprint(eval_set),
    }
    key = artifact_key(STAGE, VERSION, inputs)
    folder = run_dir.find(STAGE, VERSION, key, force=force)
    if folder is not None:
        return {name: list(ids) for name, ids in read_json(folder / META_FILE)["subsets"].items()}
    subsets = find()
    run_dir.commit(STAGE, VERSION, key, inputs, extra={"subsets": subsets})
    return subsets
