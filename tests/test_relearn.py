"""Relearning on the organism: epoch 0 and a zero learning rate are exactly `dsg evaluate`, the
original model is never touched, and a large step moves the model.

The organism's selection uses every forget document by default, so these runs sample 160 of
its 240 for the statistics and fine-tune on the other 80.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dsg.core.progress import Tracker
from dsg.engine.session import Session
from dsg.stages import select
from dsg.stages.attack import relearn
from dsg.stages.corpus import sample_forget, unsampled_forget
from dsg.stages.evaluate import evaluate

OPTIONS = {
    "dataset_size": 160,
    "questions": "all",  # no subsets to compute, and an unguarded hazard accuracy below 100%
    "ratio_percentiles": (90.0,),
    "n_features": (150,),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("relearn")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)  # no config file of the caller's
        session = Session.open({**OPTIONS, "out": out})
        report = json.loads(evaluate.run(session).read_text())
        before = {k: v.clone() for k, v in session.model().model.state_dict().items()}
        configs = evaluate.expand(select.ensure(session), session)
        found = relearn.curves(session, configs, [0.0, 1e-2], 1, Tracker(session.console))
    return {"report": report, "before": before, "session": session, "found": found}


def test_held_out_documents_are_the_ones_the_sample_leaves_out() -> None:
    docs = [f"document {i}" for i in range(50)]
    sampled = sample_forget(docs, 30, seed=4)
    held = unsampled_forget(docs, 30, seed=4)
    assert len(held) == 20 and not set(held) & set(sampled)
    assert sorted(held + sampled) == sorted(docs)
    assert held == [d for d in docs if d in held]  # corpus order
    assert unsampled_forget(docs, 30, seed=5) != held
    assert unsampled_forget(docs, 50, seed=4) == []


def test_epoch_0_and_learning_rate_0_are_what_evaluate_reports(run: dict[str, Any]) -> None:
    report, found = run["report"], run["found"]
    assert found.documents == 80 and found.rows > 0
    assert [(c.strategy, c.n_features) for c in found.configs] == [
        (c["strategy"], c["n_features"]) for c in report["configs"]
    ]
    zero = found.curves[0]
    assert [e.epoch for e in zero.epochs] == [0, 1]
    for epoch in zero.epochs:
        assert epoch.unguarded.per_set == report["baseline"]
        assert epoch.unguarded.fired is None
        for guarded, config in zip(epoch.guarded, report["configs"], strict=True):
            assert guarded.per_set == config["per_set"]
            assert guarded.hazard == config["target_accuracy"]
            assert guarded.side_effects == config["side_effect_accuracy"]
            assert guarded.fired == config["fired"][report["target"]]


def test_the_original_model_is_untouched(run: dict[str, Any]) -> None:
    after = run["session"].model().model.state_dict()
    assert after.keys() == run["before"].keys()
    assert all(torch.equal(after[k], v) for k, v in run["before"].items())


def test_a_large_step_moves_the_unguarded_model(run: dict[str, Any]) -> None:
    start, moved = run["found"].curves[1].epochs
    assert moved.loss is not None and moved.loss > 0
    assert moved.unguarded.hazard != start.unguarded.hazard
    assert moved.unguarded.per_set != start.unguarded.per_set


def test_curves_share_the_untrained_start(run: dict[str, Any]) -> None:
    zero, large = run["found"].curves
    assert zero.epochs[0] is large.epochs[0]
    assert zero.seconds > 0 and large.learning_rate == 1e-2


def test_relearning_needs_held_out_documents(tmp_path: Path) -> None:
    from dsg.core.errors import UserError

    session = Session.open({"out": tmp_path})  # the organism's default samples all 240
    with pytest.raises(UserError, match="all 240 forget documents were used"):
        relearn.held_out_rows(session, session.model().tokenizer)
