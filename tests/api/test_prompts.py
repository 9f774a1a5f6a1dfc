"""MCQ prompt strings, character for character against the reference's Gemma format."""

from __future__ import annotations

import pytest
from tiny_gemma import write_tokenizer

from dsg.api.interfaces import EvalSet, MCQuestion
from dsg.api.prompts import (
    ChatTemplateFormat,
    PlainFormat,
    choose_format,
    default_format,
    format_fingerprint,
    render_question,
)
from dsg.core.errors import UserError
from dsg.scoring.rows import encode

BIO = EvalSet("wmdp-bio", "biology", ())
QUESTION = MCQuestion("What is X?", ("alpha", "beta", "gamma", "delta"), 2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("gemma-tok")
    write_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def test_with_question_matches_reference_string(tokenizer) -> None:
    text, gold = render_question(ChatTemplateFormat(), tokenizer, BIO, QUESTION)
    assert text == (
        "<bos><start_of_turn>user\n"
        "The following are multiple choice questions (with answers) about biology.\n"
        "What is X?\nA. alpha\nB. beta\nC. gamma\nD. delta"
        "<end_of_turn>\n<start_of_turn>model\nAnswer: ("
    )
    assert gold == 2


def test_without_question_is_the_bare_choice_block(tokenizer) -> None:
    text, _ = render_question(ChatTemplateFormat(), tokenizer, BIO, QUESTION, with_question=False)
    assert text == (
        "<bos><start_of_turn>user\nA. alpha\nB. beta\nC. gamma\nD. delta"
        "<end_of_turn>\n<start_of_turn>model\nAnswer: ("
    )


def test_permutation_moves_choices_and_gold(tokenizer) -> None:
    text, gold = render_question(ChatTemplateFormat(), tokenizer, BIO, QUESTION, (3, 2, 0, 1))
    assert "\nA. delta\nB. gamma\nC. alpha\nD. beta<end_of_turn>" in text
    assert gold == 1


def test_plain_format_without_chat_template(tokenizer) -> None:
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    fmt = default_format(plain)
    assert isinstance(fmt, PlainFormat)
    text, _ = render_question(fmt, plain, BIO, QUESTION)
    assert text == (
        "<bos>The following are multiple choice questions (with answers) about biology.\n"
        "What is X?\nA. alpha\nB. beta\nC. gamma\nD. delta\nAnswer: ("
    )


def test_case_format_wins(tokenizer) -> None:
    class Mine:
        name = "mine"

        def render(self, tokenizer, eval_set, question, choices) -> str:
            return f"{question}|{'|'.join(choices)}"

    mine = Mine()
    assert choose_format(mine, tokenizer) is mine
    assert isinstance(choose_format(None, tokenizer), ChatTemplateFormat)


def test_fingerprint_follows_the_rendered_template(tokenizer) -> None:
    before = format_fingerprint(ChatTemplateFormat(), tokenizer)
    edited = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    edited.chat_template = tokenizer.chat_template.replace("model", "assistant")
    assert format_fingerprint(ChatTemplateFormat(), edited) != before
    assert format_fingerprint(ChatTemplateFormat(), tokenizer) == before


def test_tokenised_prompt_has_one_bos(tokenizer) -> None:
    text, _ = render_question(ChatTemplateFormat(), tokenizer, BIO, QUESTION)
    (ids,) = encode(tokenizer, [text], n_ctx=4096)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_bad_questions_are_user_errors(tokenizer) -> None:
    with pytest.raises(UserError, match="exactly 4"):
        render_question(ChatTemplateFormat(), tokenizer, BIO, MCQuestion("q", ("a", "b"), 0))
    with pytest.raises(UserError, match="answer index 7"):
        render_question(ChatTemplateFormat(), tokenizer, BIO, MCQuestion("q", tuple("abcd"), 7))
    with pytest.raises(UserError, match="context"):
        text, _ = render_question(ChatTemplateFormat(), tokenizer, BIO, QUESTION)
        encode(tokenizer, [text], n_ctx=5)
