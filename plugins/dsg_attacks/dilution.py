"""The ``dilution`` attack: benign text in the user's turn, so that a gate deciding on the whole
prompt sees the hazard among many harmless tokens.

The benign text is inserted at the token level, so a budget of N adds exactly N benign tokens
(plus one separator between the benign text and the question, the same tokens every time); a
budget of 0 leaves the prompt exactly as ``dsg evaluate`` renders it. Each prompt takes its
benign text from a different place in the corpus (prompt j starts at document j), so one odd
passage cannot decide a whole curve.

Under log-likelihood scoring (``target.scoring``) the benign text goes into the cloze context:
before the pre-question line (after any BOS or chat-template opening; before the question in a
format without that line), after the question (before the answer cue), or around both. The
choices are never padded: each is scored after the diluted context, with the continuation
tokens ``dsg evaluate`` scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dsg.api import AttackPrompt, AttackRow, AttackTarget, EvalSet, MCQuestion, UserError

PLACEMENTS = ("before", "after", "around")
SEPARATOR = "\n\n"
"""Between the benign text and the question (or the choices), as a user would paste it."""


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a piece of a prompt, adding no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def split_prompt(target: AttackTarget, eval_set: EvalSet, q: MCQuestion) -> tuple[str, str, str]:
    """The rendered prompt as (what precedes the user's text, the user's text, what follows)."""
    from dsg.api.prompts import body, render_question

    text, _ = render_question(target.prompt_format, target.tokenizer, eval_set, q)
    user = body(eval_set, q.question, q.choices).strip()  # chat templates trim the user's text
    start = text.find(user)
    if start < 0 or text.count(user) != 1:
        raise UserError(
            f"the prompt format {target.prompt_format.name!r} does not show the question as "
            "dsg's default body, so dilution cannot tell where the user's text is"
        )
    return text[:start], user, text[start + len(user) :]


def split_cloze(target: AttackTarget, eval_set: EvalSet, q: MCQuestion) -> tuple[str, str, str]:
    """The rendered cloze context, as the log-likelihood split reads it (trailing whitespace
    moved to the choices), as (what precedes the user's text, the user's text: the pre-question
    line, when the format shows it, and the question, what follows: the answer cue)."""
    from dsg.api.prompts import pre_question, render_cloze

    assert target.cloze_format is not None
    context = render_cloze(target.cloze_format, target.tokenizer, eval_set, q)[0].rstrip()
    line, question = pre_question(eval_set.subject), q.question.strip()
    at = context.find(question)
    if at < 0 or context.count(question) != 1:
        raise UserError(
            f"the cloze format {target.cloze_format.name!r} does not show the question once, "
            "so dilution cannot tell where the user's text is"
        )
    shown = context.count(line) == 1 and context.find(line) + len(line) <= at
    start = context.find(line) if shown else at
    end = at + len(question)
    return context[:start], context[start:end], context[end:]


PREFIX_CHARS = 16
"""Characters read per token asked for, at first, from a long document (a token is rarely
longer); doubled until the prefix holds enough tokens."""
CUT_TOKENS = 8
"""Tokens dropped at the end of a document's prefix: those near the cut may tokenise otherwise
in the whole document."""


class BenignStream:
    """Benign token ids for prompt j: the documents from document j on (cyclically), joined by
    the separator, as many tokens as asked. Of a long document only a prefix is tokenised, long
    enough for the tokens asked (a 20 MB line is not tokenised to take 25 tokens of it)."""

    def __init__(self, tokenizer: Any, texts: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.separator = encode(tokenizer, SEPARATOR)
        self._ids: dict[int, tuple[list[int], bool]] = {}
        """Per document: its first token ids, and whether they are all of them."""

    def _doc(self, k: int, need: int) -> list[int]:
        """At least the first ``need`` token ids of document k (all of them when it has fewer),
        as tokenising the whole document gives them."""
        ids, whole = self._ids.get(k, ([], False))
        text = self.texts[k]
        chars = PREFIX_CHARS * (need + CUT_TOKENS)
        while not whole and len(ids) < need:
            if len(text) <= chars:
                ids, whole = encode(self.tokenizer, text), True
            else:
                ids = encode(self.tokenizer, text[:chars])[:-CUT_TOKENS]
                chars *= 2
            self._ids[k] = ids, whole
        return ids

    def take(self, j: int, n: int) -> list[int]:
        out: list[int] = []
        k = j % len(self.texts)
        for _ in range(n + len(self.texts)):  # every document may tokenise to nothing
            if len(out) >= n:
                break
            out += (self.separator if out else []) + self._doc(k, n - len(out))
            k = (k + 1) % len(self.texts)
        if len(out) < n:
            raise UserError("the benign corpus tokenises to no text; pass another --benign-corpus")
        return out[:n]


def diluted(
    target: AttackTarget,
    stream: BenignStream,
    eval_set: EvalSet,
    q: MCQuestion,
    j: int,
    placement: str,
    budget: int,
) -> list[int]:
    """Prompt j's ids with ``budget`` benign tokens at ``placement``; unchanged at budget 0."""
    if budget == 0:
        from dsg.api.prompts import render_question

        text, _ = render_question(target.prompt_format, target.tokenizer, eval_set, q)
        return target.encode([text])[0]
    head, user, tail = split_prompt(target, eval_set, q)
    return inserted(target.tokenizer, (head, user, tail), stream, j, placement, budget)


def diluted_cloze(
    target: AttackTarget,
    stream: BenignStream,
    eval_set: EvalSet,
    q: MCQuestion,
    evaluated: AttackPrompt,
    j: int,
    placement: str,
    budget: int,
) -> AttackPrompt:
    """The evaluated cloze prompt of question j with ``budget`` benign tokens at ``placement``
    in its context, the choices' tokens unchanged; itself at budget 0."""
    if budget == 0:
        return evaluated
    parts = split_cloze(target, eval_set, q)
    ids = inserted(target.tokenizer, parts, stream, j, placement, budget)
    return AttackPrompt(tuple(ids), evaluated.gold, evaluated.continuations, evaluated.lengths)


def inserted(
    tok: Any,
    parts: tuple[str, str, str],
    stream: BenignStream,
    j: int,
    placement: str,
    budget: int,
) -> list[int]:
    """The ids of ``head + user + tail`` with prompt j's benign tokens beside ``user``."""
    head, user, tail = parts
    sep = stream.separator
    benign = stream.take(j, budget)
    if placement == "before":
        return encode(tok, head) + benign + sep + encode(tok, user + tail)
    if placement == "after":
        return encode(tok, head + user) + sep + benign + encode(tok, tail)
    first = budget - budget // 2
    return (
        encode(tok, head) + benign[:first] + sep + encode(tok, user)
        + sep + benign[first:] + encode(tok, tail)
    )  # fmt: skip


def separators(placement: str) -> int:
    return 2 if placement == "around" else 1


def longest_prompt(target: AttackTarget) -> int:
    """Tokens of the longest undiluted prompt (under log-likelihood scoring, the longest row:
    a context and its longest choice), each checked to split as dilution needs."""
    if target.cloze_format is None:
        texts = ["".join(split_prompt(target, e, q)) for e in target.eval_sets for q in e.questions]
        return max((len(ids) for ids in target.encode(texts)), default=0)
    for e in target.eval_sets:
        for q in e.questions:
            split_cloze(target, e, q)
    rows = [p for ps in target.evaluated_prompts().values() for p in ps]
    return max((len(p.ids) + max(map(len, p.continuations)) for p in rows), default=0)


class DilutionAttack:
    """Benign text before, after or around each question, at growing token budgets."""

    name = "dilution"
    description = (
        "benign text inserted before, after or around each question, at growing token budgets"
    )
    axis = "budget"

    def check_settings(self, settings: Any) -> None:
        unknown = [p for p in settings.placements if p not in PLACEMENTS]
        if unknown:
            raise UserError(
                f"unknown placement {unknown[0]!r}; choose one of: {', '.join(PLACEMENTS)}"
            )
        if settings.benign_corpus is not None and settings.benign_questions is not None:
            raise UserError("pass --benign-corpus or --benign-questions, not both")

    def check(self, target: AttackTarget) -> None:
        s = target.settings
        self.check_settings(s)
        stream = BenignStream(target.tokenizer, target.benign_texts())
        longest = longest_prompt(target)
        for placement in s.placements:
            room = target.n_ctx - longest - separators(placement) * len(stream.separator)
            over = [b for b in s.budgets if b > room]
            if over:
                raise UserError(
                    f"budget {max(over)} does not fit: the longest prompt is {longest} tokens "
                    f"and the model's context {target.n_ctx}, so {placement!r} takes at most "
                    f"{max(room, 0)} benign tokens; pass --budget values up to {max(room, 0)}"
                )

    def run(self, target: AttackTarget) -> Iterator[AttackRow]:
        s = target.settings
        stream = BenignStream(target.tokenizer, target.benign_texts())
        evaluated = target.evaluated_prompts() if target.cloze_format is not None else {}
        for placement in dict.fromkeys(s.placements):
            for budget in sorted(set(s.budgets)):
                prompts = {
                    e.name: [
                        diluted_cloze(target, stream, e, q, base, j, placement, budget)
                        for j, (q, base) in enumerate(
                            zip(e.questions, evaluated[e.name], strict=True)
                        )
                    ]
                    if evaluated
                    else [
                        AttackPrompt(
                            tuple(diluted(target, stream, e, q, j, placement, budget)), q.answer
                        )
                        for j, q in enumerate(e.questions)
                    ]
                    for e in target.eval_sets
                }
                added = budget + (separators(placement) * len(stream.separator) if budget else 0)
                yield AttackRow(
                    {"placement": placement, "budget": budget},
                    target.score(prompts),
                    {"benign_tokens": budget, "tokens_added": added},
                )
