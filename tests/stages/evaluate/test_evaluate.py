"""`dsg evaluate` end to end on the tiny case: report, plot, resume and forced recomputation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TinyWorld, open_session

from dsg.api.prompts import ChatTemplateFormat, answer_token_ids, render_question
from dsg.engine.session import Session
from dsg.guardrail import DynamicClamp, StaticClamp
from dsg.scoring.letter import Scorer
from dsg.stages.evaluate import evaluate, heldout
from dsg.stages.evaluate.score import Count, Point, unlearning_score

pytestmark = pytest.mark.usefixtures("no_config_file")

CONFIG_FIELDS = {
    "strategy",
    "ratio_percentile",
    "n_features",
    "multiplier",
    "threshold",
    "features",
    "target_accuracy",
    "side_effect_accuracy",
    "per_set",
    "fired",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("evaluate"), threshold=0.3)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The parts of a report that must not depend on timing or on where it was written."""
    keep = ("unlearning_score", "baseline", "configs", "sets", "target", "side_effects")
    return {k: report[k] for k in keep}


def count_sweeps(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[int]:
    calls: list[int] = []
    original = Scorer.sweep

    def spy(self: Scorer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Scorer, "sweep", spy)
    return calls


def check_heldout_by_hand(
    report: dict[str, Any], session: Session, right: dict[int | None, dict[str, list[bool]]]
) -> None:
    """The held-out section against per-question answers (``right[None]``: the unguarded
    model; ``right[i]``: configuration i): the lowest selection-part target accuracy among the
    configurations keeping 0.99 of the unguarded side-effect accuracy there, measured on the
    report part."""
    seed = session.settings.heldout_seed
    parts = {
        e.name: [heldout.in_selection_part(q, seed) for q in e.questions]
        for e in session.case.eval_sets(session.data)
    }

    def accuracy(who: int | None, name: str, selection: bool) -> float:
        kept = [r for r, s in zip(right[who][name], parts[name], strict=True) if s == selection]
        return sum(kept) / len(kept)

    def passes(who: int, selection: bool) -> bool:
        side = accuracy(who, "tiny-side", selection)
        return side >= 0.99 * accuracy(None, "tiny-side", selection)

    found = report["heldout"]
    for name, counts in found["questions"].items():
        assert counts == {"selection": sum(parts[name]), "report": parts[name].count(False)}
    configs = range(len(report["configs"]))
    passing = [(accuracy(i, "tiny-target", True), i) for i in configs if passes(i, True)]
    assert passing, "the tiny sweep should have a configuration that passes the gate"
    chosen = min(passing)[1]
    assert found["chosen"] == chosen
    held = 1 - accuracy(chosen, "tiny-target", False) if passes(chosen, False) else 0.0
    assert report["heldout_score"] == pytest.approx(held)
    assert found["report"]["per_set"] == {
        name: pytest.approx(accuracy(chosen, name, False)) for name in parts
    }


def test_report_schema_plot_and_numbers(world: TinyWorld, registry: Any, tmp_path: Path) -> None:
    session = open_session(registry, tmp_path / "run")
    path = evaluate.run(session)
    report = json.loads(path.read_text())
    assert path.parent.parent == tmp_path / "run" / "reports" and path.name == "report.json"
    assert (tmp_path / "run" / "report.json").read_bytes() == path.read_bytes()
    plot = tmp_path / "run" / "tradeoff.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.read_bytes() == (path.parent / "tradeoff.png").read_bytes()
    assert report["target"] == "tiny-target" and report["side_effects"] == ["tiny-side"]
    assert {"select", "subsets", "baseline", "sweep", "report"} <= set(report["timings"])
    assert report["environment"]["versions"]["torch"]
    assert report["settings"]["multipliers"] == [20.0]
    configs = report["configs"]
    assert [(c["n_features"], c["strategy"]) for c in configs] == [
        (2, "dynamic"),
        (2, "static"),
        (4, "dynamic"),
        (4, "static"),
    ]
    for c in configs:
        assert CONFIG_FIELDS <= set(c)
        assert set(c["per_set"]) == set(c["fired"]) == {"tiny-target", "tiny-side"}
        assert (c["threshold"] is None) == (c["strategy"] == "static")
        assert len(c["features"]) == c["n_features"]
    side_total = report["sets"]["tiny-side"]["evaluated"]
    side_baseline = Count(round(report["baseline"]["tiny-side"] * side_total), side_total)
    points = [
        Point(Count(**c["counts"]["tiny-target"]), Count(**c["counts"]["tiny-side"]), side_baseline)
        for c in configs
    ]
    assert report["unlearning_score"] == unlearning_score(points)

    # Every count equals a batch-1, full-forward, hooked re-run of the same prompts.
    model, sae = world.model, world.sae
    answer = answer_token_ids(world.tokenizer)
    right: dict[int | None, dict[str, list[bool]]] = {}
    for index, c in [(None, None), *enumerate(configs)]:
        right[index] = {}
        for eval_set in session.case.eval_sets(session.data):
            clamp: DynamicClamp | StaticClamp | None = None
            if c is not None:
                features = torch.tensor(c["features"])
                clamp = (
                    DynamicClamp(sae, features, c["threshold"], c["multiplier"])
                    if c["strategy"] == "dynamic"
                    else StaticClamp(sae, features, c["multiplier"])
                )
            fired = 0
            rows = right[index][eval_set.name] = []
            for q in eval_set.questions:
                text, gold = render_question(ChatTemplateFormat(), world.tokenizer, eval_set, q)
                tokens = world.tokenizer(text, add_special_tokens=False, return_tensors="pt")
                ids = tokens["input_ids"]
                mask = torch.ones_like(ids, dtype=torch.bool)
                hooks = (
                    []
                    if clamp is None
                    else [(world.hook_name, lambda r, hook, c=clamp, m=mask: c(r, m))]
                )
                with torch.inference_mode():
                    logits = model.run_with_hooks(ids, fwd_hooks=hooks)
                rows.append(int(logits[0, -1].softmax(-1)[answer].amax(0).argmax()) == gold)
                fired += 0 if clamp is None else int(clamp.fired[0])
            total = len(eval_set.questions)
            if c is None:
                assert report["baseline"][eval_set.name] == sum(rows) / total
                continue
            assert c["counts"][eval_set.name] == {"correct": sum(rows), "total": total}
            assert c["fired"][eval_set.name] == fired / total
    check_heldout_by_hand(report, session, right)


def test_resume_after_interrupt_gives_the_same_report(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = json.loads(evaluate.run(open_session(registry, tmp_path / "fresh")).read_text())

    out = tmp_path / "interrupted"
    calls = count_sweeps(monkeypatch, fail_at=2)  # one pass per set: dies in the second set
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(open_session(registry, out))
    assert not (out / "report.json").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    calls = count_sweeps(monkeypatch)
    resumed = json.loads(evaluate.run(open_session(registry, out)).read_text())
    assert len(calls) == 1  # only the unfinished set ran again
    assert comparable(resumed) == comparable(fresh)

    calls.clear()
    evaluate.run(open_session(registry, out))
    assert calls == []

    evaluate.run(open_session(registry, out, force=True))
    assert len(calls) == 2

    calls.clear()
    changed = json.loads(evaluate.run(open_session(registry, out, multipliers=(3.0,))).read_text())
    assert len(calls) == 2  # a new multiplier is a new key, never a stale result
    assert {c["multiplier"] for c in changed["configs"]} == {3.0}


def test_empty_subset_is_reported_not_fatal(registry: Any, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    out = tmp_path / "run"
    session = open_session(registry, out, questions="correct")
    terminal = io.StringIO()  # a terminal console: live progress displays must not clash
    session.console = Console(file=terminal, force_terminal=True, width=120)
    report = json.loads(evaluate.run(session).read_text())
    assert "unlearning score" in terminal.getvalue()
    empty = [name for name, s in report["sets"].items() if s["evaluated"] == 0]
    assert empty, "the tiny model should know no question under all 24 orders"
    for name in empty:
        assert report["baseline"][name] is None
        assert all(c["per_set"][name] is None for c in report["configs"])
        assert any(name in w for w in report["warnings"])
    assert list((out / "subsets").iterdir())
    assert report["target"] in empty  # so there is no score, not a 0 read as a measurement
    assert report["unlearning_score"] is None and report["heldout_score"] is None
    assert report["heldout"]["no_score"] == "the target set 'tiny-target' has no evaluated question"
    printed = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue()).split())
    assert (
        "unlearning score: none (the target set 'tiny-target' has no question in subset" in printed
    )
    assert "held-out score: none (the target set 'tiny-target' has no evaluated" in printed
    assert "0.0000" not in printed


def test_case_without_eval_sets_is_a_user_error(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsg.core.errors import UserError

    session = open_session(registry, tmp_path / "run")
    monkeypatch.setattr(session.case, "eval_sets", lambda data: [])
    with pytest.raises(UserError, match="no multiple-choice eval sets"):
        evaluate.run(session)
    assert not (tmp_path / "run" / "select").exists()  # failed before any costly stage
