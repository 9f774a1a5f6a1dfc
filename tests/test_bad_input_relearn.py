"""Bad relearning arguments: refused with one UserError line before anything loads or is
written (the attack command turns it into exit code 2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dsg.core.errors import UserError
from dsg.engine.session import Session
from dsg.stages.attack import relearn


@pytest.mark.parametrize(
    ("rates", "epochs", "fragment"),
    [
        ([0.0], 1, "learning rate 0.0 is not a finite number above 0"),
        ([1e-5, -1e-4], 1, "learning rate -0.0001 is not"),
        ([math.nan], 1, "learning rate nan is not"),
        ([math.inf], 1, "learning rate inf is not"),
        ([], 1, "give at least one learning rate"),
        ([1e-5], 0, "at least 1 epoch, got 0"),
    ],
)
def test_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rates: list[float], epochs: int, fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    session = Session.open({"out": out})
    with pytest.raises(UserError, match="^[^\n]*$") as raised:
        relearn.relearn(session, [], rates, epochs)
    assert fragment in str(raised.value)
    assert not out.exists()
