"""MCQ prompt strings: the reference's Gemma-instruct format, generalised to any tokenizer.

The body is the pre-question line, the question and the choice block; the default format wraps
it in the tokenizer's chat template and appends ``Answer: (`` so the next token is the letter.
A case can supply its own :class:`~dsg.api.interfaces.PromptFormat`, which then wins.
:func:`answer_token_ids` says which tokens answer such a prompt. Log-likelihood scoring reads
cloze prompts instead (:class:`~dsg.api.interfaces.ClozeFormat`): a context, the question
without its choices, and one continuation per choice, as lm-eval's multiple-choice tasks. It
sits in ``dsg.api`` so that an attack renders and reads questions exactly as ``dsg evaluate``
does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dsg.api.interfaces import ClozeFormat, EvalSet, MCQuestion, PromptFormat
from dsg.core.errors import UserError

if TYPE_CHECKING:
    import torch

LETTERS = ("A", "B", "C", "D")
ANSWER_PREFIX = "Answer: ("


def pre_question(subject: str) -> str:
    """The line that introduces every question of a set."""
    return f"The following are multiple choice questions (with answers) about {subject}.\n"


def choice_block(choices: Sequence[str]) -> str:
    """``\\nA. c0\\nB. c1\\nC. c2\\nD. c3``: the choices with their letters, after a newline."""
    if len(choices) != len(LETTERS):
        raise UserError(f"a question needs exactly 4 choices, got {len(choices)}: {list(choices)}")
    return "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True))


def body(eval_set: EvalSet, question: str | None, choices: Sequence[str]) -> str:
    """The user-turn text; without a question, only the choice block (no leading newline)."""
    if question is None:
        return choice_block(choices)[1:]
    return pre_question(eval_set.subject) + question + choice_block(choices)


class ChatTemplateFormat:
    """The reference's Gemma-instruct prompt, rendered by the tokenizer's own chat template."""

    name = "chat-template"

    def render(
        self, tokenizer: Any, eval_set: EvalSet, question: str | None, choices: Sequence[str]
    ) -> str:
        messages = [{"role": "user", "content": body(eval_set, question, choices)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + ANSWER_PREFIX


class PlainFormat:
    """For tokenizers without a chat template (base models): BOS, the body, then the answer
    cue on its own line."""

    name = "plain"

    def render(
        self, tokenizer: Any, eval_set: EvalSet, question: str | None, choices: Sequence[str]
    ) -> str:
        bos = getattr(tokenizer, "bos_token", None) or ""
        return bos + body(eval_set, question, choices) + "\n" + ANSWER_PREFIX


def default_format(tokenizer: Any) -> PromptFormat:
    """The chat-template format when the tokenizer has a template, else the plain one."""
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplateFormat()
    return PlainFormat()


def choose_format(case_format: PromptFormat | None, tokenizer: Any) -> PromptFormat:
    """The case's own format when it has one, else the default for this tokenizer."""
    return case_format if case_format is not None else default_format(tokenizer)


class ChatClozeFormat:
    """Cloze prompts in the tokenizer's chat template: the user turn is the pre-question line
    and the question, then the generation prompt; each continuation is the choice itself."""

    name = "cloze-chat-template"

    def render(
        self, tokenizer: Any, eval_set: EvalSet, question: str | None, choices: Sequence[str]
    ) -> tuple[str, list[str]]:
        line = pre_question(eval_set.subject)
        content = line + question if question is not None else line.rstrip("\n")
        messages = [{"role": "user", "content": content}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, list(choices)


class PlainClozeFormat:
    """Cloze prompts for tokenizers without a chat template, as lm-eval's MMLU-style tasks:
    BOS, the pre-question line, ``Question: ...\nAnswer:`` and `` {choice}``. Without the
    pre-question line (``subject_line=False``, ``cloze-no-subject``) the guardrail decides on
    the question alone and a prompt is shorter."""

    def __init__(self, subject_line: bool = True) -> None:
        self.subject_line = subject_line
        self.name = "cloze-plain" if subject_line else "cloze-no-subject"

    def render(
        self, tokenizer: Any, eval_set: EvalSet, question: str | None, choices: Sequence[str]
    ) -> tuple[str, list[str]]:
        bos = getattr(tokenizer, "bos_token", None) or ""
        line = pre_question(eval_set.subject) if self.subject_line else ""
        cue = f"Question: {question}\nAnswer:" if question is not None else "Answer:"
        return bos + line + cue, [f" {choice}" for choice in choices]


def choose_cloze_format(case_format: ClozeFormat | None, tokenizer: Any) -> ClozeFormat:
    """The case's own cloze format when it has one, else the chat-template one when the
    tokenizer has a template, else the plain one."""
    if case_format is not None:
        return case_format
    if getattr(tokenizer, "chat_template", None):
        return ChatClozeFormat()
    return PlainClozeFormat()


def _flat(rendered: str | tuple[str, list[str]]) -> list[str]:
    return [rendered] if isinstance(rendered, str) else [rendered[0], *rendered[1]]


def format_fingerprint(fmt: PromptFormat | ClozeFormat, tokenizer: Any) -> str:
    """A hash of what the format actually renders, so a changed template changes every cache key
    built on it (the name alone would not notice an edited chat template)."""
    probe_set = EvalSet("probe", "probing", ())
    probe = MCQuestion("Which is first?", ("w", "x", "y", "z"), 0)
    texts = [
        *_flat(fmt.render(tokenizer, probe_set, probe.question, probe.choices)),
        *_flat(fmt.render(tokenizer, probe_set, None, probe.choices)),
    ]
    digest = hashlib.sha256("\x00".join([fmt.name, *texts]).encode()).hexdigest()[:16]
    return f"{fmt.name}:{digest}"


def permuted(question: MCQuestion, order: Sequence[int]) -> tuple[list[str], int]:
    """The choices shown in ``order`` and the gold index among them."""
    if len(question.choices) != len(LETTERS):
        raise UserError(
            f"question {question.question!r} has {len(question.choices)} choices; "
            f"MCQ evaluation needs exactly {len(LETTERS)}"
        )
    if question.answer not in range(len(question.choices)):
        raise UserError(
            f"question {question.question!r} has answer index {question.answer}, "
            f"outside its {len(question.choices)} choices"
        )
    return [question.choices[i] for i in order], list(order).index(question.answer)


def render_question(
    fmt: PromptFormat,
    tokenizer: Any,
    eval_set: EvalSet,
    question: MCQuestion,
    order: Sequence[int] = (0, 1, 2, 3),
    *,
    with_question: bool = True,
) -> tuple[str, int]:
    """The prompt for one question under one answer order, and its gold index."""
    choices, gold = permuted(question, order)
    text = fmt.render(tokenizer, eval_set, question.question if with_question else None, choices)
    return text, gold


def render_cloze(
    fmt: ClozeFormat,
    tokenizer: Any,
    eval_set: EvalSet,
    question: MCQuestion,
    *,
    with_question: bool = True,
) -> tuple[str, list[str], int]:
    """The context, one continuation per choice (in the set's order) and the gold index."""
    choices, gold = permuted(question, range(len(LETTERS)))
    context, continuations = fmt.render(
        tokenizer, eval_set, question.question if with_question else None, choices
    )
    if len(continuations) != len(choices):
        raise UserError(
            f"cloze format {fmt.name!r} gave {len(continuations)} continuations "
            f"for {len(choices)} choices"
        )
    return context, continuations, gold


def answer_token_ids(tokenizer: Any, letters: Sequence[str] = LETTERS) -> torch.Tensor:
    """``[2, 4]`` ids of ``A``-``D`` and `` A``-`` D`` (or of other ``letters``, for prompts
    that label their choices otherwise). A spaced letter that is not a single token is replaced
    by the bare letter, so the max over the two rows is unaffected."""
    import torch

    rows: list[list[int]] = [[], []]
    for letter in letters:
        bare = tokenizer.encode(letter, add_special_tokens=False)
        if len(bare) != 1:
            raise UserError(
                f"the tokenizer splits the answer letter {letter!r} into {len(bare)} tokens; "
                "MCQ scoring needs each letter to be one token"
            )
        spaced = tokenizer.encode(" " + letter, add_special_tokens=False)
        rows[0].append(bare[0])
        rows[1].append(spaced[0] if len(spaced) == 1 else bare[0])
    return torch.tensor(rows, dtype=torch.long)
