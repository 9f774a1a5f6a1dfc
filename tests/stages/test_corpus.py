"""Corpus building against hand-computed inputs (reference algorithm: Data)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dsg.api.data import DataSource
from dsg.config.settings import Settings
from dsg.core.errors import UserError
from dsg.stages.corpus import (
    Documents,
    build_rows,
    chunk_text,
    filter_docs,
    load_documents,
    n_rows_used,
    sample_forget,
    tokenize_and_concat,
)

PAD, EOS, BOS = 0, 1, 2


class CharTokenizer:
    """One token per character (id = 10 + code point); ``<eos>``/``<pad>`` parse to their ids
    only when intact; BOS is prepended to every call, like Gemma's tokenizer."""

    eos_token = "<eos>"
    bos_token = "<bos>"
    pad_token_id = PAD
    eos_token_id = EOS
    bos_token_id = BOS

    def __call__(self, text: str) -> dict[str, list[int]]:
        ids = [BOS]
        for piece in re.split(r"(<eos>|<pad>)", text):
            if piece == "<eos>":
                ids.append(EOS)
            elif piece == "<pad>":
                ids.append(PAD)
            else:
                ids.extend(10 + ord(c) for c in piece)
        return {"input_ids": ids}


def test_filter_keeps_strictly_longer_docs_in_order() -> None:
    docs = ["x" * 5, "y" * 6, "z" * 4, "w" * 7]
    assert filter_docs(docs, 5) == ["y" * 6, "w" * 7]


def test_forget_sample_is_seeded_python_random_sample() -> None:
    docs = [f"doc{i}" for i in range(30)]
    assert sample_forget(docs, 10, seed=3) == random.Random(3).sample(docs, 10)
    assert sorted(sample_forget(docs, 100, seed=3)) == sorted(docs)
    assert sample_forget(docs, 10, seed=3) != sample_forget(docs, 10, seed=4)


def test_chunks_are_twenty_ceil_sized_slices() -> None:
    text = "a" * 95
    chunks = chunk_text(text)
    assert len(chunks) == 20
    assert [len(c) for c in chunks] == [5] * 19 + [0]
    assert "".join(chunks) == text
    assert chunk_text("") == [""] * 20
    assert [len(c) for c in chunk_text("b" * 41)] == [3] * 13 + [2] + [0] * 6


def test_rows_follow_concat_and_chunk_counts() -> None:
    # 45 + len("<eos>") + 45 = 95 characters -> 19 chunks of 5 and one empty chunk; the EOS
    # string is chunk 9 exactly. Stream: 20 BOS + 90 characters + 1 EOS = 111 tokens.
    docs = ["a" * 45, "b" * 45]
    rows = tokenize_and_concat(CharTokenizer(), docs, seq_len=10)
    assert rows.shape == (11, 10)  # floor(111 / 10), one token dropped
    assert (rows[:, 0] == BOS).all()
    assert not (rows == PAD).any()
    flat = rows.flatten()
    assert int((flat == EOS).sum()) == 1
    # A BOS starts every chunk: chunks 0-8 take 6 tokens each, chunk 9 ("<eos>") takes 2,
    # chunks 10-18 take 6 each; chunk 19's BOS (position 110) falls in the dropped tail.
    chunk_bos = [6 * i for i in range(9)] + [54] + [56 + 6 * i for i in range(9)]
    expected_bos = set(chunk_bos) | {10 * r for r in range(11)}
    assert {i for i in range(110) if flat[i] == BOS} == expected_bos


def test_pad_ids_are_dropped_from_the_stream() -> None:
    # 95 characters -> chunks of 5; the "<pad>" string is chunk 9 exactly and becomes a pad id.
    plain = tokenize_and_concat(CharTokenizer(), ["c" * 95], seq_len=5)
    padded = tokenize_and_concat(CharTokenizer(), ["c" * 45 + "<pad>" + "c" * 45], seq_len=5)
    assert plain.shape == (23, 5)  # 20 BOS + 95 characters
    assert padded.shape == (22, 5)  # 20 BOS + 90 characters, the pad dropped
    assert not (padded == PAD).any()


def _docs(n_forget: int, n_retain: int) -> Documents:
    return Documents(
        forget=[f"forget document number {i:03d} " * 2 for i in range(n_forget)],
        retain=[f"retain document number {i:03d} " * 2 for i in range(n_retain)],
    )


def test_both_sides_get_n_rows_and_a_seeded_shuffle() -> None:
    docs = _docs(40, 10)
    tok = CharTokenizer()
    forget, retain = build_rows(
        tok, docs, seq_len=16, dataset_size=1024, dataset_fraction=100.0, seed=0
    )
    sampled = tokenize_and_concat(tok, random.Random(0).sample(docs.forget, 40), 16)
    n_forget = sampled.shape[0]
    unshuffled = tokenize_and_concat(tok, docs.retain, 16)
    n_retain = unshuffled.shape[0]
    n = n_rows_used(1024, 100.0, n_forget, n_retain)
    assert n == min(n_forget, n_retain) == n_retain
    assert forget.shape == retain.shape == (n, 16)
    gen = torch.Generator().manual_seed(0)  # forget rows are shuffled first, then retain rows
    assert torch.equal(forget, sampled[torch.randperm(n_forget, generator=gen)][:n])
    assert torch.equal(retain, unshuffled[torch.randperm(n_retain, generator=gen)][:n])
    again = build_rows(tok, docs, seq_len=16, dataset_size=1024, dataset_fraction=100.0, seed=0)
    assert torch.equal(again[0], forget) and torch.equal(again[1], retain)
    other = build_rows(tok, docs, seq_len=16, dataset_size=1024, dataset_fraction=100.0, seed=1)
    assert not torch.equal(other[1], retain)


def test_row_count_formula() -> None:
    assert n_rows_used(1024, 100.0, 300, 270) == 270
    assert n_rows_used(1024, 50.0, 301, 270) == 135
    assert n_rows_used(100, 100.0, 300, 270) == 100
    assert n_rows_used(1024, 10.0, 15, 9) == 0


def test_fraction_cuts_rows() -> None:
    forget, retain = build_rows(
        CharTokenizer(),
        _docs(40, 10),
        seq_len=16,
        dataset_size=1024,
        dataset_fraction=50.0,
        seed=0,
    )
    full = tokenize_and_concat(CharTokenizer(), _docs(40, 10).retain, 16).shape[0]
    assert forget.shape[0] == retain.shape[0] == int(full * 50.0 / 100)


@pytest.mark.parametrize(
    ("texts", "seq_len", "fraction", "message"),
    [
        ((40, 1), 1000, 100.0, r"retain corpus of case 'toy'.*smaller seq_len"),  # too little
        ((40, 10), 16, 0.5, "leaves no row"),  # zero rows after the fraction
    ],
)
def test_too_little_text_is_one_error_naming_the_fix(
    texts: tuple[int, int], seq_len: int, fraction: float, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        build_rows(
            CharTokenizer(),
            _docs(*texts),
            seq_len=seq_len,
            dataset_size=1024,
            dataset_fraction=fraction,
            seed=0,
            case="toy",
        )


class _Case:
    def __init__(self, forget: list[str], retain: list[str]) -> None:
        self._forget, self._retain = forget, retain

    def forget_texts(self, data: object) -> list[str]:
        return self._forget

    def retain_texts(self, data: object) -> list[str]:
        return self._retain


def _session(case: _Case, min_chars: int, data: DataSource | None = None) -> SimpleNamespace:
    settings = Settings(case="toy", model="m", sae="s", min_chars=min_chars, out=Path("."))
    return SimpleNamespace(settings=settings, case=case, data=data or DataSource())


def test_documents_are_filtered_before_fingerprinting() -> None:
    docs = load_documents(_session(_Case(["short", "long enough text"], ["also long text"]), 5))
    assert docs.forget == ["long enough text"]
    assert (
        docs.forget_fingerprint != Documents(["short", "long enough text"], []).forget_fingerprint
    )


def test_empty_corpus_after_filtering_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"forget corpus of case 'toy'.*longer than 50"):
        load_documents(_session(_Case(["x" * 50], ["y" * 60]), 50))


def test_a_corpus_file_replaces_the_case_s_corpus_whatever_the_case_knows(tmp_path: Path) -> None:
    """--forget-corpus is read by dsg, not by the case: a case that knows nothing of corpus
    files (as _Case) still has its forget documents replaced; its retain side stays its own."""
    (tmp_path / "mine.txt").write_text("my first forget document\nmy second one\n", "utf-8")
    data = DataSource(forget_corpus=tmp_path / "mine.txt")
    case = _Case(["the case's own forget text"], ["the case's retain text"])
    docs = load_documents(_session(case, 5, data))
    assert docs.forget == ["my first forget document", "my second one"]
    assert docs.retain == ["the case's retain text"]


def test_a_byte_order_mark_is_not_part_of_the_first_document(tmp_path: Path) -> None:
    from dsg.api.data import read_text_corpus

    (tmp_path / "c.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n', "utf-8-sig")
    (tmp_path / "c.txt").write_text("first\nsecond\n", "utf-8-sig")
    assert read_text_corpus(tmp_path / "c.jsonl") == ["first", "second"]
    assert read_text_corpus(tmp_path / "c.txt") == ["first", "second"]
