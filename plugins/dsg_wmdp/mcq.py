"""Multiple-choice sets from the hub: WMDP (``cais/wmdp``) and MMLU subjects (``cais/mmlu``)."""

from __future__ import annotations

from dsg.api import DataSource, EvalSet, HubDataset, MCQuestion, UserError

WMDP = "cais/wmdp"
MMLU = "cais/mmlu"
WMDP_SUBJECTS = {"wmdp-bio": "biology", "wmdp-cyber": "cyber security"}


def wmdp_dataset(config: str) -> HubDataset:
    return HubDataset(WMDP, config, "test")


def mmlu_dataset(subject: str) -> HubDataset:
    return HubDataset(MMLU, subject, "test")


def questions_of(dataset: HubDataset, data: DataSource) -> tuple[MCQuestion, ...]:
    """Rows with ``question``, four ``choices`` and an ``answer`` index, in dataset order."""
    rows = zip(
        dataset.column(data, "question"),
        dataset.column(data, "choices"),
        dataset.column(data, "answer"),
        strict=True,
    )
    questions = []
    for number, (question, choices, answer) in enumerate(rows):
        if not _well_formed(question, choices, answer):
            raise UserError(
                f"dataset {dataset}, row {number}: expected a question, a list of 4 choices and "
                f"an answer 0-3, got choices {choices!r} and answer {answer!r}"
            )
        questions.append(MCQuestion(str(question), tuple(str(c) for c in choices), int(answer)))
    return tuple(questions)


def _well_formed(question: object, choices: object, answer: object) -> bool:
    return (
        isinstance(question, str)
        and isinstance(choices, list | tuple)
        and len(choices) == 4
        and all(isinstance(c, str) for c in choices)
        and isinstance(answer, int)
        and not isinstance(answer, bool)
        and 0 <= answer < 4
    )


def wmdp_set(config: str, data: DataSource) -> EvalSet:
    """``wmdp-bio`` or ``wmdp-cyber``, named as the config."""
    return EvalSet(config, WMDP_SUBJECTS[config], questions_of(wmdp_dataset(config), data))


def mmlu_set(subject: str, data: DataSource) -> EvalSet:
    """An MMLU subject, named ``mmlu-high-school-us-history`` with subject line
    "high school us history"."""
    name = "mmlu-" + subject.replace("_", "-")
    return EvalSet(name, subject.replace("_", " "), questions_of(mmlu_dataset(subject), data))
