"""`dsg evaluate --scoring loglikelihood` end to end on the tiny case: the report's accuracies
and acc_norm against a plain loop, the one-order subsets, the cache keys and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch
from tiny import TinyWorld, UseWorld
from typer.testing import CliRunner

from dsg.api.prompts import ChatClozeFormat, render_cloze
from dsg.cli.app import app
from dsg.core.errors import UserError
from dsg.engine.session import Session
from dsg.scoring.cloze import encode_pair
from dsg.stages.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("no_config_file")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("evaluate-loglik"), threshold=0.3)


def open_session(registry: Any, out: Path, **cli: Any) -> Session:
    """A tiny-case session scored by log-likelihood unless ``cli`` names another scoring."""
    return tiny.open_session(registry, out, **{"scoring": "loglikelihood", **cli})


def answers(
    world: TinyWorld, session: Session
) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """Per set, by a plain unguarded loop: gold, acc's and acc_norm's answers."""
    found = {}
    for eval_set in session.case.eval_sets(session.data):
        gold, acc, norm = [], [], []
        for q in eval_set.questions:
            context, continuations, g = render_cloze(
                ChatClozeFormat(), world.tokenizer, eval_set, q
            )
            lls = []
            for continuation in continuations:
                head, tail = encode_pair(world.tokenizer, context, continuation)
                with torch.inference_mode():
                    logits = world.model(torch.tensor([head + tail]))
                logp = torch.log_softmax(logits[0].float(), -1)
                lls.append(sum(float(logp[len(head) - 1 + k, t]) for k, t in enumerate(tail)))
            per_char = [ll / len(c) for ll, c in zip(lls, q.choices, strict=True)]
            gold.append(g)
            acc.append(max(range(4), key=lambda i: (lls[i], -i)))
            norm.append(max(range(4), key=lambda i: (per_char[i], -i)))
        found[eval_set.name] = (gold, acc, norm)
    return found


def accuracy(right: list[bool]) -> float:
    return sum(right) / len(right)


def test_report_accuracies_acc_norm_and_heldout(
    world: TinyWorld, registry: Any, tmp_path: Path
) -> None:
    session = open_session(registry, tmp_path / "run")
    report = json.loads(evaluate.run(session).read_text())
    expected = answers(world, session)
    for name, (gold, acc, norm) in expected.items():
        assert report["baseline"][name] == pytest.approx(
            accuracy([a == g for a, g in zip(acc, gold, strict=True)])
        )
        assert report["baseline_acc_norm"][name] == pytest.approx(
            accuracy([a == g for a, g in zip(norm, gold, strict=True)])
        )
    assert report["inputs"]["prompt_format"].startswith("loglikelihood/cloze-chat-template:")
    assert report["settings"]["scoring"] == "loglikelihood"
    for config in report["configs"]:
        assert set(config["per_set_acc_norm"]) == set(config["per_set"])
    assert "score" not in report["heldout"] and "heldout_score" in report
    assert report["heldout"]["questions"]


def test_correct_subset_is_one_order(world: TinyWorld, registry: Any, tmp_path: Path) -> None:
    """``correct``: the questions the unguarded model answers right in the set's order."""
    session = open_session(registry, tmp_path / "run", questions="correct")
    report = json.loads(evaluate.run(session).read_text())
    for name, (gold, acc, _) in answers(world, session).items():
        assert report["sets"][name]["evaluated"] == sum(
            a == g for a, g in zip(acc, gold, strict=True)
        )


def test_the_baseline_reads_the_subsets_pass_and_equals_a_fresh_one(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under log-likelihood scoring the baseline of the chosen questions is the subsets' own
    computation: each question's four rows run once with the question (and once more without
    it, for ``correct-iff-question``), not a third time for the baseline."""
    from dsg.scoring.loglik import ClozeScorer

    scored: list[int] = []
    logliks = ClozeScorer.logliks

    def counting(self: ClozeScorer, items: Any) -> torch.Tensor:
        scored.append(len(items))
        return logliks(self, items)

    monkeypatch.setattr(ClozeScorer, "logliks", counting)
    session = open_session(registry, tmp_path / "run", questions="correct")
    report = json.loads(evaluate.run(session).read_text())
    sets = session.case.eval_sets(session.data)
    correct = [report["sets"][e.name]["evaluated"] for e in sets]
    assert sorted(scored) == sorted([len(e.questions) for e in sets] + [n for n in correct if n])
    assert all(report["baseline"][e.name] == 1.0 for e in sets if correct[sets.index(e)])

    from dsg.stages.evaluate.modes import ClozeMode

    baseline = ClozeMode.baseline

    def forgetting(self: ClozeMode, prompts: Any) -> Any:
        self.seen.clear()
        return baseline(self, prompts)

    monkeypatch.setattr(ClozeMode, "baseline", forgetting)
    again = open_session(registry, tmp_path / "fresh", questions="correct")
    fresh = json.loads(evaluate.run(again).read_text())
    for field in ("baseline", "baseline_acc_norm"):
        assert fresh[field] == report[field]
    assert [c["per_set"] for c in fresh["configs"]] == [c["per_set"] for c in report["configs"]]


def test_letter_and_loglik_artifacts_never_mix(registry: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    letter = json.loads(evaluate.run(open_session(registry, out, scoring="letter")).read_text())
    loglik = json.loads(evaluate.run(open_session(registry, out)).read_text())
    assert "baseline_acc_norm" not in letter and "baseline_acc_norm" in loglik
    assert letter["inputs"]["prompt_format"] != loglik["inputs"]["prompt_format"]
    assert len(list((out / "baseline").iterdir())) == 2 * 2  # two sets, two modes


def test_an_intervention_without_decide_on_prefix_is_refused(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Bare:
        fired = None

        def __call__(self, resid: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return resid

    monkeypatch.setattr(evaluate, "build_intervention", lambda *args: Bare())
    with pytest.raises(UserError, match="strategy 'dynamic' cannot be scored by log-likelihood"):
        evaluate.run(open_session(registry, tmp_path / "run"))


def test_an_unknown_scoring_is_one_line(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    result = CliRunner().invoke(app, ["evaluate", "--case", "tiny", "--scoring", "bogus"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln and not ln.startswith("[dsg] ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "scoring" in lines[0]
    assert "Traceback" not in result.output
