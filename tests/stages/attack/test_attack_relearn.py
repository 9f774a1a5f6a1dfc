"""`dsg attack relearn` on the tiny case: the fine-tuning text is forget text the statistics
never read, training is counted in optimiser steps of a fixed number of rows in one seeded order,
a zero learning rate is exactly `dsg evaluate`, a large one moves the copy and never the run's
model, and bad options are one error line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dsg_attacks.relearn
import pytest
import torch
from attack_results import counts
from commands import nothing_written, one_error, run
from tiny import FORGET_TEXTS, TinyWorld, UseWorld, open_session

from dsg.config.settings import replaced
from dsg.stages.attack import attack, relearn
from dsg.stages.corpus import is_held_out, load_documents, sample_forget
from dsg.stages.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("no_config_file")

HOLDOUT = 50.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("relearn"), threshold=0.3)


def test_hold_out_is_a_seeded_hash_of_the_text() -> None:
    docs = [f"forget document number {i}" for i in range(400)]
    held = [d for d in docs if is_held_out(d, 3, 25.0)]
    assert 60 < len(held) < 140  # about a quarter
    assert held == [d for d in docs + ["another"] if is_held_out(d, 3, 25.0)][: len(held)]
    assert [d for d in docs if is_held_out(d, 4, 25.0)] != held  # the seed matters
    assert set(held) <= {d for d in docs if is_held_out(d, 3, 50.0)}  # nested as it grows
    assert not any(is_held_out(d, 3, 0.0) for d in docs)
    assert all(is_held_out(d, 3, 100.0) for d in docs)


def test_held_out_documents_never_reach_the_statistics(registry: Any, tmp_path: Path) -> None:
    session = open_session(registry, tmp_path / "run", relearn_holdout=HOLDOUT)
    documents = load_documents(session)
    assert documents.held_out and documents.forget
    assert not set(documents.held_out) & set(documents.forget)
    assert sorted(documents.held_out + documents.forget) == sorted(FORGET_TEXTS)
    s = session.settings
    assert not set(sample_forget(documents.forget, s.dataset_size, s.seed)) & set(
        documents.held_out
    )
    n_docs, rows = relearn.held_out_rows(session, session.model().tokenizer)
    assert n_docs == len(documents.held_out) and rows.shape[1] == s.seq_len


SCHEDULE = {"relearn_batch": 3, "relearn_stage_steps": 2, "relearn_stages": 2}
"""Few steps, to keep the suite fast: 2 stages of 2 steps of 3 rows."""


def relearn_run(registry: Any, out: Path, rates: tuple[float, ...]) -> dict[str, Any]:
    """The attack with ``rates`` as given (0 included, which the option refuses)."""
    session = open_session(registry, out, relearn_holdout=HOLDOUT, **SCHEDULE)
    session.settings = replaced(session.settings, learning_rates=rates)
    return json.loads(attack.run(session, "relearn").read_text())


@pytest.fixture(scope="module")
def relearned(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    steps: list[float] = []
    batches: list[list[list[int]]] = []
    original_step, original_batches = torch.optim.AdamW.step, dsg_attacks.relearn.row_batches

    def counted_step(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        steps.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    def recorded_batches(*args: Any) -> Iterator[torch.Tensor]:
        batches.append([])
        for batch in original_batches(*args):
            batches[-1].append(batch.tolist())
            yield batch

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)
        mp.setattr(dsg_attacks.relearn, "check_learning_rates", list)  # 0 as a control
        session = open_session(registry, out, relearn_holdout=HOLDOUT)
        report = json.loads(evaluate.run(session).read_text())
        before = {k: v.clone() for k, v in session.model().model.state_dict().items()}
        mp.setattr(torch.optim.AdamW, "step", counted_step)
        mp.setattr(dsg_attacks.relearn, "row_batches", recorded_batches)
        data = relearn_run(registry, out, (0.0, 0.5))
        after = session.model().model.state_dict()
    return {
        "report": report, "data": data, "before": before, "after": after, "steps": steps,
        "batches": batches,
    }  # fmt: skip


def test_zero_learning_rate_is_exactly_evaluate(relearned: dict[str, Any]) -> None:
    report, rows = relearned["report"], relearned["data"]["rows"]
    zero = [r for r in rows if r["condition"]["learning_rate"] == 0.0]
    assert [r["condition"]["step"] for r in zero] == [0, 2, 4]
    for row in zero:
        assert row["unguarded"]["per_set"] == report["baseline"]
        for mine, theirs in zip(row["configs"], report["configs"], strict=True):
            assert counts(mine) == counts(theirs)
            assert mine["fired"] == theirs["fired"]
    assert zero[1]["details"]["loss"] > 0 and zero[0]["details"]["loss"] is None


def test_training_is_counted_in_optimiser_steps(relearned: dict[str, Any]) -> None:
    """Each learning rate takes stages x steps optimiser steps of exactly ``relearn_batch``
    rows, drawn in the same seeded order at every rate, cycling through the rows."""
    steps, batches = relearned["steps"], relearned["batches"]
    per_rate = SCHEDULE["relearn_stages"] * SCHEDULE["relearn_stage_steps"]
    assert steps == [0.0] * per_rate + [0.5] * per_rate
    assert len(batches) == 2 and batches[0] == batches[1]
    assert [len(b) for b in batches[0]] == [SCHEDULE["relearn_batch"]] * per_rate


def test_a_large_step_moves_the_copy_only(relearned: dict[str, Any]) -> None:
    rows = relearned["data"]["rows"]
    large = [r for r in rows if r["condition"]["learning_rate"] == 0.5]
    zero = [r for r in rows if r["condition"]["learning_rate"] == 0.0]
    assert large[0]["unguarded"] == zero[0]["unguarded"]  # the same untrained start
    assert large[2]["details"]["loss"] != zero[2]["details"]["loss"]
    assert any(r["unguarded"] != large[0]["unguarded"] for r in large[1:])
    before, after = relearned["before"], relearned["after"]
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_report_names_the_fine_tuning_data(relearned: dict[str, Any]) -> None:
    data = relearned["data"]
    assert (data["attack"], data["axis"]) == ("relearn", "step")
    n_docs = len([d for d in FORGET_TEXTS if is_held_out(d, 0, HOLDOUT)])
    for row in data["rows"]:
        details = row["details"]
        assert details["documents"] == n_docs and details["rows"] > 0
        if row["condition"]["step"]:
            assert details["loss"] > 0 and details["seconds"] > 0
        for config in row["configs"]:  # firing rates on every set, side-effect sets included
            assert set(config["fired"]) == {data["target"], *data["side_effects"]}


def test_report_says_the_binding_check_is_overridden(relearned: dict[str, Any]) -> None:
    from dsg_attacks.relearn import OVERRIDE_NOTE

    assert relearned["data"]["warnings"] == [OVERRIDE_NOTE]


def attack_args(*args: str) -> list[str]:
    return ["attack", "relearn", *args, "--case", "tiny", "--out", "runs"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--learning-rate", "0"], ["learning rate", "0"]),
        (["--learning-rate", "1e-5", "--learning-rate", "-1"], ["learning rate", "-1"]),
        (["--learning-rate", "nan"], ["nan"]),
        (["--learning-rate", "inf"], ["inf"]),
        (["--relearn-batch", "0"], ["relearn batch", "0"]),
        (["--relearn-stage-steps", "0"], ["relearn stage steps", "0"]),
        (["--relearn-stages", "0"], ["relearn stages", "0"]),
        (["--relearn-holdout", "101"], ["relearn holdout", "101"]),
        ([], ["none is left to relearn on", "--relearn-holdout"]),
    ],
)
def test_bad_relearn_options(
    world: TinyWorld, use_world: UseWorld, args: list[str], fragments: list[str]
) -> None:
    use_world(world)
    extra = [] if "--relearn-holdout" in args or not args else ["--relearn-holdout", "50"]
    one_error(run(*attack_args(*args, *extra)), *fragments)
    nothing_written()
