"""The smollm2-bio case's lm-eval tasks: they render the prompts dsg scores, and lm-eval's
evaluation of the guarded SmolLM2 answers as dsg's log-likelihood engine does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lm_eval")

import dsg_smollm2  # noqa: E402
from dsg_smollm2 import SAE_NAME  # noqa: E402
from dsg_smollm2.case import SmolLM2BioCase  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from dsg.api.data import DataSource  # noqa: E402
from dsg.api.plugins import registry  # noqa: E402
from dsg.api.prompts import PlainClozeFormat, render_cloze  # noqa: E402
from dsg.bundle import Bundle, from_sae  # noqa: E402
from dsg.engine.backends.transformer_lens import TransformerLensBackend  # noqa: E402
from dsg.guardrail import DynamicClamp  # noqa: E402
from dsg.lm_eval_model import GuardedLM  # noqa: E402
from dsg.scoring.loglik import ClozeScorer  # noqa: E402
from dsg_runtime.binding import record_binding  # noqa: E402

TASKS_DIR = Path(dsg_smollm2.__file__).parent / "data" / "lm_eval"
TASKS = {  # lm-eval task: the case's set
    "smollm2_bio_biology": "smollm2-biology",
    "smollm2_bio_geography": "geography",
    "smollm2_bio_history": "history",
    "smollm2_bio_people": "people",
}
LIMIT = 6


@pytest.fixture(autouse=True)
def fresh_lm_eval_log_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval binds a log handler to the stderr of the moment (an earlier test's, closed)."""
    monkeypatch.setattr(logging.getLogger("lm_eval"), "handlers", [])


@pytest.fixture(scope="module")
def tasks() -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def sets() -> dict[str, Any]:
    return {e.name: e for e in SmolLM2BioCase().eval_sets(DataSource())}


def test_tasks_render_the_prompts_dsg_scores(
    tasks: TaskManager, sets: dict[str, Any], smollm2_folder: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    found = tasks.load(list(TASKS))["tasks"]
    assert set(found) == set(TASKS)
    for name, task in found.items():
        eval_set = sets[TASKS[name]]
        docs = list(task.test_docs())
        assert len(docs) == len(eval_set.questions)
        for doc, question in zip(docs, eval_set.questions, strict=True):
            context, continuations, gold = render_cloze(
                PlainClozeFormat(subject_line=False), tokenizer, eval_set, question
            )
            delimiter = task.config.target_delimiter
            assert task.doc_to_text(doc) == context
            assert [delimiter + c for c in task.doc_to_choice(doc)] == continuations
            assert task.doc_to_target(doc) == gold


def test_guarded_smollm2_answers_in_lm_eval_as_in_dsg(
    tasks: TaskManager, sets: dict[str, Any], smollm2_folder: Path, tmp_path: Path
) -> None:
    """The first questions of each set, unguarded and under one guardrail (the shipped SAE,
    arbitrary features, a threshold that fires on about half of the contexts), answered by dsg's
    engine on TransformerLens and by lm-eval on transformers. The forward passes differ in
    floating point (logits within 1e-4), so a near tie may flip: one question a set at most."""
    reg = registry()
    loaded = reg.get("model_loaders", "smollm2-135m-instruct").load(
        "smollm2-135m-instruct", device="cpu", dtype=torch.float32
    )
    shipped = reg.get("sae_loaders", "smollm2").load(SAE_NAME, device="cpu", dtype=torch.float32)
    features, multiplier = list(range(0, 4096, 16)), 20.0
    scorer = ClozeScorer(
        TransformerLensBackend(loaded.model, loaded.tokenizer), shipped.hook_name, batch_size=8
    )
    fmt = PlainClozeFormat(subject_line=False)
    items = {
        name: [
            scorer.encode(*render_cloze(fmt, scorer.tokenizer, e, q)[:2], q.choices)
            for q in e.questions[:LIMIT]
        ]
        for name, e in sets.items()
    }
    probe = DynamicClamp(shipped.sae, features, 1.0, multiplier)
    every = [item for rows in items.values() for item in rows]
    rates = torch.cat([_context_rate(scorer, probe, item) for item in every])
    alpha = float(rates.median())
    clamp = DynamicClamp(shipped.sae, features, alpha, multiplier)
    ours = {name: scorer.sweep(rows, [clamp]) for name, rows in items.items()}
    lm = GuardedLM(pretrained=str(smollm2_folder), batch_size=8, device="cpu")
    bound = record_binding(lm.model, shipped.hook_name)
    bundle = from_sae(shipped, features, threshold=alpha, multiplier=multiplier, binding=bound)
    plain = _answers(lm, tasks)
    lm.use_bundle(Bundle.load(bundle.save(tmp_path / "bundle")))
    guarded = _answers(lm, tasks)
    fired = 0
    for task, name in TASKS.items():
        base, (outcome,) = ours[name]
        fired += int(outcome.fired.sum())
        assert sum(a != b for a, b in zip(plain[task], base.argmax(1).tolist(), strict=True)) <= 1
        mismatched = sum(
            a != b for a, b in zip(guarded[task], outcome.predicted.tolist(), strict=True)
        )
        assert mismatched <= 1, (task, guarded[task], outcome.predicted.tolist())
    assert 0 < fired < len(every)
    assert guarded != plain  # the guardrail changed some answer


def _context_rate(scorer: ClozeScorer, clamp: DynamicClamp, item: Any) -> torch.Tensor:
    """A question's hit rate on its context (where the clamp decides), ``[1]``."""
    tokens = torch.tensor([item.context])
    attended = torch.ones(tokens.shape, dtype=torch.bool)
    clamp(scorer.backend.to_hook(tokens, attended, scorer.split), attended)
    return clamp.rates


def _answers(lm: GuardedLM, tasks: TaskManager) -> dict[str, list[int]]:
    """lm-eval's answer (acc's argmax) per document of each task, from its logged samples."""
    results = simple_evaluate(
        model=lm, tasks=list(TASKS), task_manager=tasks, limit=LIMIT, log_samples=True,
        verbosity="ERROR",
    )  # fmt: skip
    answers = {}
    for task in TASKS:
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        answers[task] = [
            max(range(4), key=lambda i, s=s: (s["filtered_resps"][i][0], -i)) for s in samples
        ]
    return answers
