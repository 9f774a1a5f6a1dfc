"""`dsg attack relearn` on the tiny case: the fine-tuning text is forget text the statistics
never read, a zero learning rate is exactly `dsg evaluate`, a large one moves the copy and never
the run's model, and bad options are one error line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dsg_attacks.relearn
import pytest
import torch
from test_attack import counts
from test_bad_input import nothing_written
from test_cli_errors import one_error, run
from test_evaluate import _no_config_file, open_session  # noqa: F401  (autouse fixture)
from tiny import FORGET_TEXTS, TinyWorld, UseWorld, tiny_registry

from dsg.config.settings import replaced
from dsg.stages.attack import attack, relearn
from dsg.stages.corpus import is_held_out, load_documents, sample_forget
from dsg.stages.evaluate import evaluate

HOLDOUT = 50.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("relearn"), threshold=0.3)


registry = pytest.fixture(scope="module", name="registry")(tiny_registry)


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


def relearn_run(registry: Any, out: Path, rates: tuple[float, ...], epochs: int) -> dict[str, Any]:
    """The attack with ``rates`` as given (0 included, which the option refuses)."""
    session = open_session(registry, out, relearn_holdout=HOLDOUT, epochs=epochs)
    session.settings = replaced(session.settings, learning_rates=rates)
    return json.loads(attack.run(session, "relearn").read_text())


@pytest.fixture(scope="module")
def relearned(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)
        mp.setattr(dsg_attacks.relearn, "check_learning_rates", list)  # 0 as a control
        session = open_session(registry, out, relearn_holdout=HOLDOUT)
        report = json.loads(evaluate.run(session).read_text())
        before = {k: v.clone() for k, v in session.model().model.state_dict().items()}
        data = relearn_run(registry, out, (0.0, 0.5), 2)
        after = session.model().model.state_dict()
    return {"report": report, "data": data, "before": before, "after": after}


def test_zero_learning_rate_is_exactly_evaluate(relearned: dict[str, Any]) -> None:
    report, rows = relearned["report"], relearned["data"]["rows"]
    zero = [r for r in rows if r["condition"]["learning_rate"] == 0.0]
    assert [r["condition"]["epoch"] for r in zero] == [0, 1, 2]
    for row in zero:
        assert row["unguarded"]["per_set"] == report["baseline"]
        for mine, theirs in zip(row["configs"], report["configs"], strict=True):
            assert counts(mine) == counts(theirs)
            assert mine["fired"] == theirs["fired"]
    assert zero[1]["details"]["loss"] > 0 and zero[0]["details"]["loss"] is None


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
    assert (data["attack"], data["axis"]) == ("relearn", "epoch")
    n_docs = len([d for d in FORGET_TEXTS if is_held_out(d, 0, HOLDOUT)])
    details = data["rows"][1]["details"]
    assert details["documents"] == n_docs and details["rows"] > 0 and details["seconds"] > 0


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
        (["--epochs", "0"], ["epochs", "0"]),
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
