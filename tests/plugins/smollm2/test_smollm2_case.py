"""The smollm2-bio case's shipped data: its questions, its corpora and how it is chosen."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from dsg_smollm2 import corpora, subjects, wordnet
from dsg_smollm2.case import SmolLM2BioCase

from dsg.api.data import DataSource
from dsg.engine.session import Session
from dsg.stages.corpus import case_texts

CASE = SmolLM2BioCase()


def normalised(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


@pytest.fixture(scope="module")
def eval_sets():  # type: ignore[no-untyped-def]
    return CASE.eval_sets(DataSource())


def test_sets_are_large_enough_and_the_target_comes_first(eval_sets) -> None:  # type: ignore[no-untyped-def]
    sizes = {s.name: len(s.questions) for s in eval_sets}
    assert eval_sets[0].name == "smollm2-biology" and sizes["smollm2-biology"] >= 150
    assert len(eval_sets) >= 4 and all(n >= 100 for n in sizes.values())


def test_every_question_is_well_formed_and_asked_once(eval_sets) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, str] = {}
    for eval_set in eval_sets:
        for q in eval_set.questions:
            assert len(q.choices) == 4 and 0 <= q.answer < 4, q
            assert len({normalised(c) for c in q.choices}) == 4, q  # no two choices alike
            assert "of the above" not in " ".join(q.choices).lower(), q
            key = normalised(q.question)
            assert key not in seen, f"{q.question!r} is in {seen.get(key)} and {eval_set.name}"
            seen[key] = eval_set.name


def test_right_answers_are_spread_over_the_four_positions(eval_sets) -> None:  # type: ignore[no-untyped-def]
    for eval_set in eval_sets:
        counts = Counter(q.answer for q in eval_set.questions)
        n = len(eval_set.questions)
        assert all(0.2 * n <= counts[i] <= 0.3 * n for i in range(4)), (eval_set.name, counts)


def test_side_effect_sets_hold_no_biology(eval_sets) -> None:  # type: ignore[no-untyped-def]
    for eval_set in eval_sets[1:]:
        for q in eval_set.questions:
            text = " ".join((q.question, *q.choices))
            assert not subjects.is_biomedical(text), (eval_set.name, q.question)


def test_shipped_corpora_are_the_sample_and_retain_holds_no_biomedical_line() -> None:
    forget, retain = CASE.forget_texts(DataSource()), CASE.retain_texts(DataSource())
    assert len(forget) == len(retain) == corpora.DOCS_PER_SIDE
    assert not any(subjects.is_biomedical(line) for doc in retain for line in doc.splitlines())


def test_a_corpus_passed_by_the_user_replaces_the_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "my own document"}) + "\n")
    data = DataSource(forget_corpus=path, retain_corpus=path)
    run = SimpleNamespace(data=data, case=CASE)  # what case_texts reads of a session
    assert case_texts(run, "forget") == case_texts(run, "retain") == ["my own document"]


LICENCE_LINE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
NOUNS = (
    "05220461 08 n 01 heart 0 000 | the hollow muscular organ that pumps blood  \n"
    "14070360 26 n 01 flu 0 000 | an acute febrile highly contagious viral disease  \n"
    "14000000 26 n 01 calm 0 000 | a state of peace  \n"
    "03000000 06 n 01 syringe 0 000 | a device that draws blood  \n"
    "03000001 06 n 01 hammer 0 000 | a hand tool  \n"
)


def test_case_sides_move_biomedical_synsets_of_mixed_and_retain_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "wordnet"
    folder.mkdir()
    (folder / "data.noun").write_text(LICENCE_LINE + NOUNS, encoding="latin-1")
    for name in ("data.verb", "data.adj", "data.adv"):
        (folder / name).write_text(LICENCE_LINE, encoding="latin-1")
    monkeypatch.setattr(wordnet, "DOC_SYNSETS", 1)
    sides = subjects.case_documents(folder)
    # noun.body is biology; the flu (noun.state) is medicine, the calm (noun.state) is neither;
    # the syringe (noun.artifact) speaks of blood, so it leaves the retain side
    assert [d.split(":")[0] for d in sides["forget"]] == ["heart", "flu"]
    assert [d.split(":")[0] for d in sides["retain"]] == ["hammer"]


def test_the_sample_depends_on_each_document_alone() -> None:
    docs = [f"document {i}" for i in range(50)]
    chosen = corpora.sample(docs, 10)
    assert len(chosen) == 10 and chosen == [d for d in docs if d in chosen]
    assert corpora.sample(list(reversed(docs)), 10) == list(reversed(chosen))


def test_naming_the_model_picks_the_case_made_for_it() -> None:
    assert Session.open({"model": "smollm2-135m-instruct"}).case.name == "smollm2-bio"
    assert Session.open({}).case.name == "organism"
    named = Session.open({"model": "smollm2-135m-instruct", "case": "organism"})
    assert named.case.name == "organism"


def test_the_case_runs_the_transformers_backend_unless_told_otherwise() -> None:
    """Its log-likelihood scoring packs a question's choices there (docs/evaluate.md)."""
    assert Session.open({"case": "smollm2-bio"}).backend_name == "transformers"
    told = Session.open({"case": "smollm2-bio", "backend": "transformer_lens"})
    assert told.backend_name == "transformer_lens"
    assert Session.open({}).backend_name == "transformer_lens"  # auto, on the CPU
