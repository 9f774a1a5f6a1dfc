"""`dsg attack` under log-likelihood scoring: budget 0 of dilution is evaluate's run, the cache
keeps the two scorings apart, and the cloze placements and formats render what they say."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from attack_results import all_scores, counts, joined
from dsg_attacks.cloze_formats import CLOZE_FORMATS
from dsg_attacks.dilution import BenignStream, diluted_cloze
from dsg_attacks.formats import chosen, prompts
from dsg_organism.tokenizer import CHAT_TEMPLATE, characters, gemma_like
from tiny import TinyWorld, open_session

from dsg.api.interfaces import AttackPrompt, EvalSet, MCQuestion
from dsg.api.prompts import ChatClozeFormat, PlainClozeFormat, render_cloze
from dsg.core.errors import UserError
from dsg.scoring.cloze import cloze_item
from dsg.stages.attack import attack
from dsg.stages.evaluate import evaluate
from dsg.stages.evaluate.modes import ClozeMode

pytestmark = pytest.mark.usefixtures("no_config_file")

LOGLIK = {"scoring": "loglikelihood"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("attack-loglik"), threshold=0.3)


def test_budget_zero_gives_evaluate_accuracies(registry: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = json.loads(evaluate.run(open_session(registry, out, **LOGLIK)).read_text())
    session = open_session(registry, out, budgets=(0, 6), placements=("after",), **LOGLIK)
    data = json.loads(attack.run(session, "dilution").read_text())
    zero, padded = data["rows"]
    assert data["settings"]["scoring"] == "loglikelihood"
    assert counts(zero["unguarded"]) == {
        name: (round(acc * c["evaluated"]), c["evaluated"])
        for name, acc, c in ((n, report["baseline"][n], report["sets"][n]) for n in report["sets"])
    }
    for mine, theirs in zip(zero["configs"], report["configs"], strict=True):
        assert counts(mine) == counts(theirs)
        assert mine["fired"] == theirs["fired"]
    assert padded["details"]["benign_tokens"] == 6


def test_letter_and_loglik_answers_are_cached_apart(registry: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    for scoring in ("letter", "loglikelihood", "letter"):
        session = open_session(registry, out, budgets=(0,), placements=("before",), scoring=scoring)
        attack.run(session, "dilution")
    found = all_scores(out)
    assert len(found) == 2 * 2  # two sets, two scorings; the second letter run reads the cache
    inputs = [json.loads(m.read_text())["inputs"] for m in (out / attack.STAGE).glob("*/meta.json")]
    assert sorted(i["scoring"] for i in inputs) == ["letter"] * 2 + ["loglikelihood"] * 2


def test_relearn_step_zero_gives_evaluate_accuracies(registry: Any, tmp_path: Path) -> None:
    """The copy is scored by log-likelihood too: at step 0 it answers as dsg evaluate does."""
    out = tmp_path / "run"
    options = {"relearn_holdout": 50.0, "relearn_stages": 1, "relearn_stage_steps": 1, **LOGLIK}
    report = json.loads(evaluate.run(open_session(registry, out, **options)).read_text())
    session = open_session(registry, out, learning_rates=(0.5,), **options)
    start, trained = json.loads(attack.run(session, "relearn").read_text())["rows"]
    assert start["unguarded"]["per_set"] == report["baseline"]
    for mine, theirs in zip(start["configs"], report["configs"], strict=True):
        assert counts(mine) == counts(theirs)
        assert mine["fired"] == theirs["fired"]
    assert trained["condition"]["step"] == 1


def test_prompts_of_the_other_scoring_are_refused() -> None:
    """A letter-only attack on a log-likelihood run fails in one line, before any scoring."""
    tok = tokenizer(None)
    mode = ClozeMode(cast(Any, SimpleNamespace(tokenizer=tok, packer=None)), PlainClozeFormat())
    none: Any = None
    target = attack.Target(none, tok, 512, none, [], mode, none, none)
    assert (target.scoring, target.cloze_format) == ("loglikelihood", mode.fmt)
    with pytest.raises(UserError, match="gave letter prompts .* --scoring loglikelihood"):
        target.score({"s": [AttackPrompt((1, 2, 3), 0)]})


QUESTION = MCQuestion("Q?", ("w", "x", "y", "z"), 2)
OTHER = MCQuestion("R?", ("p", "q", "r", "s"), 0)
SET = EvalSet("s", "stuff", (QUESTION, OTHER))
LINE = "The following are multiple choice questions (with answers) about stuff.\n"
TURN = "<bos><start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[model]{% endif %}"
)


def tokenizer(template: str | None) -> Any:
    """One token per character; the given chat template, or none."""
    tok = gemma_like(characters(), chat=template is not None)
    tok.chat_template = template
    return tok


def stand_in(tok: Any, cloze_format: Any, formats: tuple[str, ...] = ()) -> Any:
    """The parts of an attack target that cloze prompt building reads."""

    def cloze_prompt(context: str, continuations: Any, choices: Any, gold: int) -> AttackPrompt:
        item = cloze_item(tok, context, continuations, choices, 512)
        return AttackPrompt(item.context, gold, item.continuations, item.lengths)

    return SimpleNamespace(
        tokenizer=tok,
        cloze_format=cloze_format,
        eval_sets=[SET],
        cloze_prompt=cloze_prompt,
        settings=SimpleNamespace(formats=formats, scoring="loglikelihood"),
    )


def evaluated(target: Any) -> AttackPrompt:
    context, continuations, gold = render_cloze(
        target.cloze_format, target.tokenizer, SET, QUESTION
    )
    return target.cloze_prompt(context, continuations, QUESTION.choices, gold)


@pytest.mark.parametrize(
    ("chat", "placement", "budget", "context"),
    [
        (False, "before", 7, "<bos>abc\n\nwx\n\n" + LINE + "Question: Q?\nAnswer:"),
        (False, "after", 3, "<bos>" + LINE + "Question: Q?\n\nabc\nAnswer:"),
        (False, "around", 7, "<bos>abc\n\n\n" + LINE + "Question: Q?\n\n\nwx\nAnswer:"),
        (False, "before", 0, "<bos>" + LINE + "Question: Q?\nAnswer:"),
        (True, "before", 3, TURN.format("abc\n\n" + LINE + "Q?").rstrip()),
        (True, "after", 3, TURN.format(LINE + "Q?\n\nabc").rstrip()),
        (True, "around", 2, TURN.format("a\n\n" + LINE + "Q?\n\nb").rstrip()),
    ],
)
def test_cloze_dilution_by_hand(chat: bool, placement: str, budget: int, context: str) -> None:
    """The benign text goes into the context only; the choices are the evaluated ones."""
    fmt = ChatClozeFormat() if chat else PlainClozeFormat()
    tok = tokenizer(CHAT_TEMPLATE if chat else None)
    target = stand_in(tok, fmt)
    base = evaluated(target)
    stream = BenignStream(tok, ["abc", "wxyz"])
    prompt = diluted_cloze(target, stream, SET, QUESTION, base, 0, placement, budget)
    assert joined(tok, prompt.ids) == context
    assert (prompt.continuations, prompt.lengths, prompt.gold) == (
        base.continuations,
        base.lengths,
        base.gold,
    )
    separators = {"before": 1, "after": 1, "around": 2}[placement] if budget else 0
    assert len(prompt.ids) == len(base.ids) + budget + 2 * separators


@pytest.mark.parametrize(
    ("placement", "context"),
    [
        ("before", "<bos>Question: abc\n\nQ?\nAnswer:"),
        ("after", "<bos>Question: Q?\n\nabc\nAnswer:"),
    ],
)
def test_cloze_dilution_in_a_format_without_the_pre_question_line(
    placement: str, context: str
) -> None:
    """smollm2-bio's format shows no pre-question line: `before` pads the question itself."""
    tok = tokenizer(None)
    target = stand_in(tok, PlainClozeFormat(subject_line=False))
    base = evaluated(target)
    prompt = diluted_cloze(target, BenignStream(tok, ["abc"]), SET, QUESTION, base, 0, placement, 3)
    assert joined(tok, prompt.ids) == context
    assert prompt.continuations == base.continuations


PLAIN = "<bos>" + LINE + "Question: Q?\nAnswer:"
SPACED = [" w", " x", " y", " z"]


@pytest.mark.parametrize(
    ("name", "template", "context", "continuations"),
    [
        ("cloze-as-evaluated", None, PLAIN, SPACED),
        ("cloze-plain", "gemma", PLAIN, SPACED),
        ("cloze-chat-template", "gemma", TURN.format(LINE + "Q?"), list("wxyz")),
        (
            "cloze-system",
            SYSTEM_TEMPLATE,
            "<bos>[system]You are a helpful assistant.\n[user]" + LINE + "Q?\n[model]",
            list("wxyz"),
        ),
        (
            "cloze-few-shot",
            None,
            "<bos>" + LINE + "Question: R?\nAnswer: p\n\nQuestion: Q?\nAnswer:",
            SPACED,
        ),
        ("cloze-lowercase", None, "<bos>" + LINE.lower() + "question: q?\nanswer:", SPACED),
        ("cloze-no-subject", None, "<bos>Question: Q?\nAnswer:", SPACED),
        ("cloze-qa", None, "<bos>" + LINE + "Q: Q?\nA:", SPACED),
    ],
)
def test_cloze_formats_by_hand(
    name: str, template: str | None, context: str, continuations: list[str]
) -> None:
    tok = tokenizer(CHAT_TEMPLATE if template == "gemma" else template)
    target = stand_in(tok, PlainClozeFormat(), (name,))
    fmt = CLOZE_FORMATS[name]
    assert fmt.render(target, SET, QUESTION) == (context, continuations)
    assert fmt.unusable(target) is None
    (prompt, _), *_ = [prompts(target, f)["s"] for f in chosen(target)[0]]
    assert (
        joined(tok, prompt.ids) + joined(tok, prompt.continuations[0])
        == context + (continuations[0])
    )
    assert prompt.gold == QUESTION.answer


def test_chat_formats_without_a_usable_template_are_skipped_by_default() -> None:
    for template, why in [(None, "no chat template"), ("gemma", "System role not supported")]:
        target = stand_in(tokenizer(CHAT_TEMPLATE if template else None), PlainClozeFormat())
        kept, skipped = chosen(target)
        assert "cloze-plain" in [f.name for f in kept]
        assert skipped and all(why in line for line in skipped)
        assert ("cloze-chat-template" in [f.name for f in kept]) == (template is not None)
