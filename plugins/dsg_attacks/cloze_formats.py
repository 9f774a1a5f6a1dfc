"""The ``format`` attack's formats under log-likelihood scoring: the same questions as cloze
prompts a user might type. Each renders a question to a context and one continuation per choice
(in the set's order); the choices are the same words in every format, so only the context the
guardrail decides on changes.

The rewrites (``cloze-lowercase``, ``cloze-no-subject``, ``cloze-qa``) and ``cloze-few-shot`` are
built on the plain cloze prompt (BOS, the pre-question line, ``Question: ...`` and
``Answer:``), lm-eval's form, whose answer cue is text a user can reword.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dsg.api import AttackTarget, EvalSet, MCQuestion, UserError, one_line_reason

FEW_SHOT = 3
"""Solved questions before the question in the few-shot formats."""
SYSTEM = "You are a helpful assistant."
"""The system turn of ``cloze-system``."""

ClozeRender = Callable[[AttackTarget, EvalSet, MCQuestion], tuple[str, list[str]]]


def _bos(tokenizer: Any) -> str:
    return getattr(tokenizer, "bos_token", None) or ""


def _spaced(q: MCQuestion) -> list[str]:
    """The plain cloze continuations: each choice after a space."""
    return [f" {choice}" for choice in q.choices]


def _as_evaluated(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import render_cloze

    if target.cloze_format is None:
        raise UserError("the cloze formats need --scoring loglikelihood")
    context, continuations, _ = render_cloze(target.cloze_format, target.tokenizer, e, q)
    return context, continuations


def _plain(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import PlainClozeFormat

    return PlainClozeFormat().render(target.tokenizer, e, q.question, q.choices)


def _chat(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import ChatClozeFormat

    return ChatClozeFormat().render(target.tokenizer, e, q.question, q.choices)


def _system(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import pre_question

    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": pre_question(e.subject) + q.question},
    ]
    text = target.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    return str(text), list(q.choices)


def exemplars(e: EvalSet, q: MCQuestion) -> list[MCQuestion]:
    """The few-shot exemplars for ``q``: the first questions of its own set, never ``q``."""
    return [s for s in e.questions if s != q][:FEW_SHOT]


def _few_shot(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import pre_question

    solved = "".join(
        f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in exemplars(e, q)
    )
    context = f"{pre_question(e.subject)}{solved}Question: {q.question}\nAnswer:"
    return _bos(target.tokenizer) + context, _spaced(q)


def _lowercase(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    """The plain cloze prompt in lower case after its BOS (the choices as they are)."""
    context, continuations = _plain(target, e, q)
    bos = _bos(target.tokenizer)
    return bos + context[len(bos) :].lower(), continuations


def _no_subject(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import PlainClozeFormat

    return PlainClozeFormat(subject_line=False).render(target.tokenizer, e, q.question, q.choices)


def _qa(target: AttackTarget, e: EvalSet, q: MCQuestion) -> tuple[str, list[str]]:
    from dsg.api.prompts import pre_question

    return f"{_bos(target.tokenizer)}{pre_question(e.subject)}Q: {q.question}\nA:", _spaced(q)


@dataclass(frozen=True)
class ClozeVariant:
    """One cloze format; ``chat`` when it renders through the tokenizer's chat template."""

    name: str
    description: str
    render: ClozeRender
    chat: bool = False

    def unusable(self, target: AttackTarget) -> str | None:
        """Why this tokenizer cannot render the format (no chat template, or one that refuses
        the format's turns), or None."""
        if not self.chat:
            return None
        if not getattr(target.tokenizer, "chat_template", None):
            return "the tokenizer has no chat template"
        probe = MCQuestion("Which is first?", ("w", "x", "y", "z"), 0)
        try:
            self.render(target, EvalSet("probe", "probing", (probe,)), probe)
        except Exception as exc:  # a template's raise_exception, whatever its class
            return f"the tokenizer's chat template refuses it ({one_line_reason(exc)})"
        return None


CLOZE_FORMATS = {
    f.name: f
    for f in (
        ClozeVariant(
            "cloze-as-evaluated",
            "the cloze prompt dsg evaluate scores (the reference row)",
            _as_evaluated,
        ),
        ClozeVariant(
            "cloze-plain", "BOS, the pre-question line, 'Question: ...', 'Answer:'", _plain
        ),
        ClozeVariant(
            "cloze-chat-template",
            "the pre-question line and the question as the user's turn of the chat template",
            _chat,
            chat=True,
        ),
        ClozeVariant(
            "cloze-system",
            f"the chat template with a system turn ({SYSTEM!r}) before the user's",
            _system,
            chat=True,
        ),
        ClozeVariant(
            "cloze-few-shot",
            f"{FEW_SHOT} solved questions of the same set (never the question) before the plain "
            "cloze question",
            _few_shot,
        ),
        ClozeVariant("cloze-lowercase", "the plain cloze prompt in lower case", _lowercase),
        ClozeVariant(
            "cloze-no-subject", "the plain cloze prompt without the pre-question line", _no_subject
        ),
        ClozeVariant("cloze-qa", "the plain cloze prompt with 'Q:' and 'A:' cues", _qa),
    )
}
