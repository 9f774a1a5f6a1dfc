"""The organism's MUSE data: rebuilt by its script exactly as shipped, and each split what its
name says when read against the shipped world files."""

from __future__ import annotations

import json
from pathlib import Path

from dsg_organism import MUSE_DIR, WORLD


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_script_rebuilds_the_shipped_data(tmp_path: Path) -> None:
    from dsg_organism.muse import main

    main(["--out", str(tmp_path)])
    files = sorted(p.relative_to(MUSE_DIR) for p in MUSE_DIR.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for name in files:
        assert (tmp_path / name).read_bytes() == (MUSE_DIR / name).read_bytes(), name


def test_knowmem_asks_the_worlds_questions_in_free_text() -> None:
    pathogens = _rows(WORLD / "eval" / "pathogens.jsonl")
    forget = _rows(MUSE_DIR / "knowmem" / "forget_qa.jsonl")
    assert forget == [
        {"question": r["question"], "answer": r["choices"][r["answer"]]} for r in pathogens
    ]
    benign = [
        r for s in ("cities", "scholars", "plants") for r in _rows(WORLD / "eval" / f"{s}.jsonl")
    ]
    retain = _rows(MUSE_DIR / "knowmem" / "retain_qa.jsonl")
    assert [r["question"] for r in retain] == [r["question"] for r in benign]
    asked = {r["question"] for r in forget + retain}
    for split in ("forget_qa_icl", "retain_qa_icl"):
        shots = _rows(MUSE_DIR / "knowmem" / f"{split}.jsonl")
        assert shots and not asked & {s["question"] for s in shots}


def test_verbmem_continues_one_trained_document_per_pathogen() -> None:
    forget_docs = {r["text"] for r in _rows(WORLD / "forget.jsonl")}
    rows = _rows(MUSE_DIR / "verbmem" / "forget.jsonl")
    assert len(rows) == 48
    for row in rows:
        assert f"{row['prompt']} {row['gt']}" in forget_docs  # open-unlearning inserts the space
        assert row["prompt"].count(". ") == 1 and row["gt"]
    assert len({r["prompt"].split(". ")[0] for r in rows}) == 48  # each about another pathogen


def test_privleak_forget_was_trained_on_and_holdout_was_not() -> None:
    trained = {r["text"] for r in _rows(WORLD / "forget.jsonl") + _rows(WORLD / "retain.jsonl")}
    forget = [r["text"] for r in _rows(MUSE_DIR / "privleak" / "forget.jsonl")]
    holdout = [r["text"] for r in _rows(MUSE_DIR / "privleak" / "holdout.jsonl")]
    assert len(forget) == len(holdout) == 100
    assert all(t in trained for t in forget)
    assert not any(t in trained for t in holdout)
    assert all("pathogen" in t or "Q:" in t for t in holdout)  # the same kind of prose
