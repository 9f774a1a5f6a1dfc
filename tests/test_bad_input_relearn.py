"""Bad relearning arguments: the `relearn` attack's check refuses them with one UserError line
before it asks for any data (the attack command turns it into exit code 2)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from dsg_attacks.relearn import RelearnAttack

from dsg.core.errors import UserError


class SettingsOnly:
    """A target that holds the settings and fails on any request for data."""

    def __init__(self, rates: list[float], epochs: int) -> None:
        self.settings = SimpleNamespace(learning_rates=rates, epochs=epochs)

    def held_out_forget(self) -> None:
        raise AssertionError("the settings are checked before any data is read")


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
def test_refused_before_anything_runs(rates: list[float], epochs: int, fragment: str) -> None:
    with pytest.raises(UserError, match="^[^\n]*$") as raised:
        RelearnAttack().check(SettingsOnly(rates, epochs))  # type: ignore[arg-type]
    assert fragment in str(raised.value)
