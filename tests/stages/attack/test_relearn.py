"""The relearning data on the organism: the forget documents the statistics' seeded sample
leaves out, and a refusal when the sample takes them all. What the `relearn` attack does with
them is tested on the tiny case (test_attack_relearn.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg.engine.session import Session
from dsg.stages.attack import relearn
from dsg.stages.corpus import sample_forget, unsampled_forget


def test_held_out_documents_are_the_ones_the_sample_leaves_out() -> None:
    docs = [f"document {i}" for i in range(50)]
    sampled = sample_forget(docs, 30, seed=4)
    held = unsampled_forget(docs, 30, seed=4)
    assert len(held) == 20 and not set(held) & set(sampled)
    assert sorted(held + sampled) == sorted(docs)
    assert held == [d for d in docs if d in held]  # corpus order
    assert unsampled_forget(docs, 30, seed=5) != held
    assert unsampled_forget(docs, 50, seed=4) == []


def test_relearning_needs_held_out_documents(tmp_path: Path) -> None:
    from dsg.core.errors import UserError

    session = Session.open({"out": tmp_path})  # the organism's default samples all 240
    with pytest.raises(UserError, match="all 240 forget documents were used"):
        relearn.held_out_rows(session, session.model().tokenizer)
