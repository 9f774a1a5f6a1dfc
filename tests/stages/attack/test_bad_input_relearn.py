"""Bad relearning arguments: the `relearn` attack's settings check refuses them with one
UserError line before any model loads (the attack command turns it into exit code 2), and its
check before it asks for any data."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from dsg_attacks.relearn import RelearnAttack

from dsg.core.errors import UserError

GOOD = {
    "learning_rates": [1e-5],
    "relearn_batch": 8,
    "relearn_stage_steps": 10,
    "relearn_stages": 5,
}


class SettingsOnly:
    """A target that holds the settings and fails on any request for data."""

    def __init__(self, **settings: Any) -> None:
        self.settings = SimpleNamespace(**{**GOOD, **settings})

    def held_out_forget(self) -> None:
        raise AssertionError("the settings are checked before any data is read")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"learning_rates": [0.0]}, "learning rate 0.0 is not a finite number above 0"),
        ({"learning_rates": [1e-5, -1e-4]}, "learning rate -0.0001 is not"),
        ({"learning_rates": [math.nan]}, "learning rate nan is not"),
        ({"learning_rates": [math.inf]}, "learning rate inf is not"),
        ({"learning_rates": []}, "give at least one learning rate"),
        ({"relearn_batch": 0}, "at least 1 of rows per optimiser step (relearn_batch), got 0"),
        ({"relearn_stage_steps": 0}, "optimiser steps per stage (relearn_stage_steps), got 0"),
        ({"relearn_stages": -1}, "at least 1 of stages (relearn_stages), got -1"),
        ({"relearn_stages": 2.5}, "(relearn_stages), got 2.5"),
    ],
)
def test_refused_before_anything_runs(settings: dict[str, Any], fragment: str) -> None:
    target = SettingsOnly(**settings)
    with pytest.raises(UserError, match="^[^\n]*$") as raised:
        RelearnAttack().check_settings(target.settings)
    assert fragment in str(raised.value)
    with pytest.raises(UserError, match="^[^\n]*$"):
        RelearnAttack().check(target)  # type: ignore[arg-type]
