"""The ``format`` attack: the same questions as a user might type them, not as the guardrail was
calibrated and evaluated on.

Each format renders one question to the prompt string and says which four labels its choices
carry; the answer is read as the largest probability of those labels at the last token, as
``dsg evaluate`` reads A-D. Under log-likelihood scoring the formats are cloze prompts instead
(:mod:`dsg_attacks.cloze_formats`); a format of the other scoring is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dsg.api import AttackPrompt, AttackRow, AttackTarget, EvalSet, MCQuestion, UserError
from dsg_attacks.cloze_formats import CLOZE_FORMATS, FEW_SHOT, ClozeVariant

Render = Callable[[AttackTarget, EvalSet, MCQuestion, Sequence[MCQuestion]], str]


def labelled(choices: Sequence[str], labels: Sequence[str]) -> str:
    """``\\nA. c0\\nB. c1...`` with the given labels."""
    return "".join(f"\n{label}. {choice}" for label, choice in zip(labels, choices, strict=True))


def user_turn(tokenizer: Any, content: str) -> str:
    """``content`` as the user's turn of the tokenizer's chat template, the model's turn opened;
    for a tokenizer without a template, BOS, the content and a newline."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return (getattr(tokenizer, "bos_token", None) or "") + content + "\n"


def _bos(tokenizer: Any) -> str:
    return getattr(tokenizer, "bos_token", None) or ""


def _as_evaluated(target: AttackTarget, e: EvalSet, q: MCQuestion, _: Sequence[MCQuestion]) -> str:
    return target.prompt_format.render(target.tokenizer, e, q.question, q.choices)


def _no_template(target: AttackTarget, e: EvalSet, q: MCQuestion, _: Sequence[MCQuestion]) -> str:
    from dsg.api.prompts import ANSWER_PREFIX, body

    return _bos(target.tokenizer) + body(e, q.question, q.choices) + "\n" + ANSWER_PREFIX


def _lm_eval(target: AttackTarget, e: EvalSet, q: MCQuestion, _: Sequence[MCQuestion]) -> str:
    from dsg.api.prompts import LETTERS, pre_question

    question = f"Question: {q.question}{labelled(q.choices, LETTERS)}\nAnswer:"
    return _bos(target.tokenizer) + pre_question(e.subject) + "\n" + question


def _few_shot(target: AttackTarget, e: EvalSet, q: MCQuestion, shots: Sequence[MCQuestion]) -> str:
    from dsg.api.prompts import ANSWER_PREFIX, LETTERS, pre_question

    solved = "".join(
        f"{s.question}{labelled(s.choices, LETTERS)}\nAnswer: ({LETTERS[s.answer]})\n\n"
        for s in shots
    )
    content = pre_question(e.subject) + solved + q.question + labelled(q.choices, LETTERS)
    return user_turn(target.tokenizer, content) + ANSWER_PREFIX


def _relabelled(labels: str) -> Render:
    def render(target: AttackTarget, e: EvalSet, q: MCQuestion, _: Sequence[MCQuestion]) -> str:
        from dsg.api.prompts import ANSWER_PREFIX, pre_question

        content = pre_question(e.subject) + q.question + labelled(q.choices, labels)
        return user_turn(target.tokenizer, content) + ANSWER_PREFIX

    return render


def _choices_first(target: AttackTarget, e: EvalSet, q: MCQuestion, _: Sequence[MCQuestion]) -> str:
    from dsg.api.prompts import ANSWER_PREFIX, LETTERS, pre_question

    content = pre_question(e.subject) + labelled(q.choices, LETTERS)[1:] + "\n" + q.question
    return user_turn(target.tokenizer, content) + ANSWER_PREFIX


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    render: Render
    letters: tuple[str, ...] = ("A", "B", "C", "D")


FORMATS = {
    f.name: f
    for f in (
        Format(
            "as-evaluated", "the prompt dsg evaluate renders (the reference row)", _as_evaluated
        ),
        Format("no-template", "the same text without the chat template", _no_template),
        Format(
            "lm-eval",
            "lm-eval's form: the subject line, 'Question: ...', the choices, 'Answer:'",
            _lm_eval,
        ),
        Format(
            "few-shot",
            f"{FEW_SHOT} solved questions from the first side-effect set before the question",
            _few_shot,
        ),
        Format("lowercase", "choices labelled a-d", _relabelled("abcd"), ("a", "b", "c", "d")),
        Format("numbered", "choices labelled 1-4", _relabelled("1234"), ("1", "2", "3", "4")),
        Format("choices-first", "the choices, then the question", _choices_first),
    )
}


def exemplars(target: AttackTarget, q: MCQuestion) -> list[MCQuestion]:
    """The few-shot exemplars for ``q``: the first questions of the first side-effect set,
    never ``q`` itself."""
    if len(target.eval_sets) < 2:
        raise UserError(
            "the few-shot format takes its exemplars from a side-effect set, and this case has "
            "none; pass --format with the other formats"
        )
    return [s for s in target.eval_sets[1].questions if s != q][:FEW_SHOT]


LOGLIKELIHOOD = "loglikelihood"


def chosen(target: AttackTarget) -> tuple[list[Format | ClozeVariant], list[str]]:
    """The formats to run, and why any format left out by default was left out: one the
    tokenizer cannot render is refused when named, skipped when ``--format`` names none."""
    formats = named(target.settings)
    kept: list[Format | ClozeVariant] = []
    skipped = []
    for fmt in formats:
        why = fmt.unusable(target) if isinstance(fmt, ClozeVariant) else None
        if why is None:
            kept.append(fmt)
        elif target.settings.formats:
            raise UserError(f"format {fmt.name!r} cannot be rendered: {why}")
        else:
            skipped.append(f"format {fmt.name!r} skipped: {why}")
    return kept, skipped


def named(settings: Any) -> list[Format] | list[ClozeVariant]:
    """The formats ``--format`` names (all of the run's scoring when none is named); an unknown
    name, or one of the other scoring, is refused."""
    cloze = settings.scoring == LOGLIKELIHOOD
    table: dict[str, Any] = CLOZE_FORMATS if cloze else FORMATS
    names = settings.formats or tuple(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        name, valid = unknown[0], ", ".join(table)
        if name in (FORMATS if cloze else CLOZE_FORMATS):
            kind = "a letter" if cloze else "a log-likelihood"
            raise UserError(
                f"format {name!r} is {kind} format and this run scores by --scoring "
                f"{settings.scoring}; choose one of: {valid}"
            )
        raise UserError(f"unknown format {name!r}; choose one of: {valid}")
    return [table[n] for n in dict.fromkeys(names)]


def prompts(target: AttackTarget, fmt: Format | ClozeVariant) -> dict[str, list[AttackPrompt]]:
    """Every question of every set in ``fmt``, with its gold label's index."""
    if isinstance(fmt, ClozeVariant):
        return {
            e.name: [
                target.cloze_prompt(*fmt.render(target, e, q), q.choices, q.answer)
                for q in e.questions
            ]
            for e in target.eval_sets
        }
    shots = fmt.name == "few-shot"
    out = {}
    for e in target.eval_sets:
        texts = [
            fmt.render(target, e, q, exemplars(target, q) if shots else ()) for q in e.questions
        ]
        ids = target.encode(texts)
        out[e.name] = [
            AttackPrompt(tuple(i), q.answer) for i, q in zip(ids, e.questions, strict=True)
        ]
    return out


class FormatAttack:
    """The same questions in the prompt formats a user might type."""

    name = "format"
    description = (
        "the same questions without the chat template, in lm-eval's form, few-shot, "
        "relabelled, or with the choices first; under log-likelihood scoring as cloze prompts "
        "(plain, chat template, system turn, few-shot, reworded)"
    )
    axis = "format"

    def check_settings(self, settings: Any) -> None:
        named(settings)

    def check(self, target: AttackTarget) -> None:
        from dsg.api.prompts import answer_token_ids

        for fmt in chosen(target)[0]:
            if isinstance(fmt, Format):
                try:
                    answer_token_ids(target.tokenizer, fmt.letters)
                except UserError as exc:
                    raise UserError(f"format {fmt.name!r}: {exc}") from None
            prompts(target, fmt)  # a prompt beyond the model's context fails here, before any work

    def run(self, target: AttackTarget) -> Iterator[AttackRow]:
        formats, skipped = chosen(target)
        for message in skipped:
            target.warn(message)
        for fmt in formats:
            letters = fmt.letters if isinstance(fmt, Format) else ()
            yield AttackRow(
                {"format": fmt.name}, target.score(prompts(target, fmt), letters=letters)
            )
