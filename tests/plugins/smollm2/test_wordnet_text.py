"""WordNet's data files read as documents by subject (the SmolLM2 SAE's and case's text)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dsg_smollm2 import subjects, wordnet

from dsg.core.errors import UserError

LICENCE_LINE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
NOUNS = (
    # offset lex_filenum ss_type w_cnt (hex) word lex_id ... p_cnt pointers | gloss
    "05220461 08 n 02 body 0 organic_structure 0 001 @ 05218660 n 0000 "
    '| the entire structure of an organism; "he felt as if his whole body were on fire"  \n'
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis  \n"
    "08929922 15 n 01 Paris 0 000 | the capital and largest city of France  \n"
)
ADJECTIVES = "00001740 00 s 02 able(a) 0 able-bodied 0 000 | having the necessary means  \n"


@pytest.fixture
def wordnet_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "usr" / "share" / "wordnet"
    folder.mkdir(parents=True)
    (folder / "data.noun").write_text(LICENCE_LINE + NOUNS, encoding="latin-1")
    (folder / "data.adj").write_text(LICENCE_LINE + ADJECTIVES, encoding="latin-1")
    for name in ("data.verb", "data.adv"):
        (folder / name).write_text(LICENCE_LINE, encoding="latin-1")
    return tmp_path


def test_synsets_name_their_lexicographer_file_lemmas_and_gloss(wordnet_dir: Path) -> None:
    folder = wordnet.wordnet_folder(wordnet_dir)  # the extracted package's root is found too
    assert list(wordnet.synsets(folder)) == [
        ("noun.body", 'body, organic structure: the entire structure of an organism; "he felt as '
         'if his whole body were on fire"'),
        ("noun.animal", "dog, domestic dog, Canis familiaris: a member of the genus Canis"),
        ("noun.location", "Paris: the capital and largest city of France"),
        ("adj.all", "able, able-bodied: having the necessary means"),
    ]  # fmt: skip


def test_documents_group_synsets_of_one_file(
    wordnet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wordnet, "DOC_SYNSETS", 1)
    docs = wordnet.documents(wordnet_dir, {"noun.animal", "noun.location"})
    assert docs == {
        "noun.animal": ["dog, domestic dog, Canis familiaris: a member of the genus Canis"],
        "noun.location": ["Paris: the capital and largest city of France"],
    }
    sides = subjects.subject_documents(wordnet_dir)
    assert [d.split(":")[0] for d in sides["forget"]] == [
        "body, organic structure",
        "dog, domestic dog, Canis familiaris",
    ]
    assert [d.split(":")[0] for d in sides["retain"]] == ["Paris", "able, able-bodied"]


def test_a_folder_without_wordnet_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="apt-get download wordnet-base"):
        wordnet.documents(tmp_path)


def test_the_held_out_split_depends_on_each_text_alone() -> None:
    docs = [f"document number {i}" for i in range(400)]
    kept, held_out = subjects.held_out_split(docs)
    assert sorted(kept + held_out) == sorted(docs) and not set(kept) & set(held_out)
    assert 60 < len(held_out) < 140  # 25% of 400, give or take the hash's spread
    again_kept, again_held = subjects.held_out_split(list(reversed(docs[:200])))
    assert set(again_held) == set(held_out) & set(docs[:200])
