"""The `relearn` attack's training schedule without a model: the seeded row order cycles through
the rows, reshuffled every pass, and the cache key of a fine-tuned copy names everything that made
its weights."""

from __future__ import annotations

from itertools import islice
from types import SimpleNamespace
from typing import Any

import dsg_attacks.relearn
import pytest
import torch
from dsg_attacks.relearn import FineTuner, row_batches


def drawn(n_rows: int, per_step: int, seed: int, steps: int) -> list[list[int]]:
    return [b.tolist() for b in islice(row_batches(n_rows, per_step, seed), steps)]


def test_rows_cycle_in_a_seeded_order_reshuffled_every_pass() -> None:
    batches = drawn(10, 4, seed=3, steps=10)  # 40 rows: four passes over 10
    assert all(len(b) == 4 for b in batches)
    flat = [i for b in batches for i in b]
    passes = [flat[i : i + 10] for i in range(0, 40, 10)]
    assert all(sorted(p) == list(range(10)) for p in passes)  # every row once per pass
    assert len({tuple(p) for p in passes}) == 4  # reshuffled each pass
    assert drawn(10, 4, seed=3, steps=10) == batches  # seeded
    assert drawn(10, 4, seed=4, steps=10) != batches
    assert [i for b in drawn(10, 20, seed=3, steps=2) for i in b] == flat  # steps span passes


class Target:
    """What :class:`FineTuner` reads of a target: the settings and a model to copy."""

    def __init__(self, **settings: Any) -> None:
        self.settings = SimpleNamespace(**{"seed": 0, "relearn_batch": 4, **settings})

    def trainable_model(self) -> tuple[Any, dict[str, Any]]:
        return torch.nn.Linear(2, 2), {"model": "m"}


def key(rate: float = 1e-4, steps: int = 10, rows: Any = None, **settings: Any) -> str:
    rows = torch.arange(12).reshape(3, 4) if rows is None else rows
    tuner = FineTuner(Target(**settings), rows, rate)  # type: ignore[arg-type]
    tuner.steps = steps
    return repr(tuner.key())


def test_the_cache_key_names_everything_that_made_the_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = key()
    changed = [
        key(rate=1e-3),
        key(steps=20),
        key(rows=torch.arange(12).reshape(3, 4) + 1),
        key(relearn_batch=8),
        key(seed=1),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert key(relearn_stage_steps=5, relearn_stages=9) == base  # the weights at step 10 alike
    for constant in ("ORDER", "OPTIMIZER"):
        with monkeypatch.context() as mp:
            mp.setattr(dsg_attacks.relearn, constant, "another")
            assert key() != base
    assert key(rate=1e-3, steps=0) == key(steps=0)  # step 0 is the original weights
