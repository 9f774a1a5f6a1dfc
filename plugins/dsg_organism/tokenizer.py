"""A byte-level BPE tokenizer for the world, with Gemma's special tokens and chat template.

Small enough (about 2k tokens) that every world word and every answer letter, with or without a
leading space, is a single token, so the letter scoring of the reference applies unchanged.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

# Gemma-2's chat template, verbatim.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Text that makes BPE learn the answer letters, bare and space-prefixed, as whole tokens.
LETTER_LINES = ["Answer: (A B C D", " A. B. C. D.", "(A (B (C (D"] * 500


def gemma_like(tok: Any, *, chat: bool = True, **options: Any) -> Any:
    """``tok`` (a ``tokenizers.Tokenizer`` whose first ids are :data:`SPECIALS`) as a fast
    tokenizer with Gemma's special tokens, ``<bos>`` before each text and, with ``chat``, Gemma's
    chat template; ``options`` go to ``PreTrainedTokenizerFast`` (padding side, input names)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        **options,
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def trained_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, :data:`SPECIALS` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def characters() -> Any:
    """One token per printable character, :data:`SPECIALS` first: counts can be checked by eye."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return tok


def portable_config(padding_side: str, chat_template: str | None = CHAT_TEMPLATE) -> dict[str, Any]:
    """``tokenizer_config.json`` as every supported transformers reads it: 4.45 knows the class
    ``PreTrainedTokenizerFast`` (5.x writes ``TokenizersBackend``, which 4.x cannot import),
    ``additional_special_tokens`` and an inlined ``chat_template``; 5.x reads the same keys and
    also finds the template in ``chat_template.jinja``."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": list(SPECIALS[4:]),
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "padding_side": padding_side,
        "model_input_names": ["input_ids", "attention_mask"],  # 4.x adds token_type_ids else
    }
    return {k: v for k, v in config.items() if v is not None}


def write_tokenizer_files(fast: Any, out: Path) -> None:
    """The tokenizer's files in ``out``, written by dsg rather than by the installed
    transformers' ``save_pretrained``, so the folder is the same whichever release builds it:
    ``tokenizer.json`` (the tokenizers model), :func:`portable_config` and, with a chat
    template, ``chat_template.jinja``."""
    out.mkdir(parents=True, exist_ok=True)
    fast.backend_tokenizer.save(str(out / "tokenizer.json"))
    config = portable_config(fast.padding_side, fast.chat_template)
    text = json.dumps(config, indent=2, ensure_ascii=False)
    (out / "tokenizer_config.json").write_text(text + "\n", encoding="utf-8")
    if fast.chat_template is not None:
        (out / "chat_template.jinja").write_text(fast.chat_template, encoding="utf-8")


def saved_and_reloaded(fast: Any, out: Path) -> Any:
    """``fast`` saved to ``out`` and reloaded with AutoTokenizer, as every consumer (and
    TransformerLens, which reloads a model's tokenizer from its folder) will load it."""
    from transformers import AutoTokenizer

    write_tokenizer_files(fast, out)
    return AutoTokenizer.from_pretrained(str(out), trust_remote_code=False)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: Path) -> Any:
    """The world's tokenizer: trained, saved to ``out``, reloaded and checked."""
    fast = gemma_like(trained_bpe([*texts, *LETTER_LINES], vocab_size), padding_side="right")
    loaded = saved_and_reloaded(fast, out)
    check_tokenizer(loaded)
    return loaded


def check_tokenizer(tok: Any) -> None:
    """The properties the evaluation relies on; fail the build early if one is missing."""
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    if [ids[s] for s in SPECIALS[:3]] != [0, 1, 2]:
        raise RuntimeError(f"the special tokens must have ids 0, 1, 2, not {ids}")
    for letter in "ABCD":
        for text in (letter, " " + letter):
            if len(tok(text, add_special_tokens=False)["input_ids"]) != 1:
                raise RuntimeError(f"answer letter {text!r} is not a single token")
    body = "x"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
    )
    if rendered != f"<bos><start_of_turn>user\n{body}<end_of_turn>\n<start_of_turn>model\n":
        raise RuntimeError(f"the chat template renders {rendered!r}, not Gemma's turn format")
    if tok("x")["input_ids"][0] != 2:
        raise RuntimeError("the tokenizer does not start a text with <bos>")


def letter_ids(tok: Any) -> list[int]:
    """Ids of "A".."D" then " A".." D", as the reference scores them."""
    return [
        tok(s, add_special_tokens=False)["input_ids"][0]
        for s in ("A", "B", "C", "D", " A", " B", " C", " D")
    ]


def render_mcq(tok: Any, subject: str, question: str, choices: list[str]) -> str:
    """The reference prompt (reference algorithm: Prompts and scoring) through the chat template,
    ending at ``Answer: (``."""
    block = "\n".join(f"{letter}. {c}" for letter, c in zip("ABCD", choices, strict=True))
    body = (
        f"The following are multiple choice questions (with answers) about {subject}.\n"
        f"{question}\n{block}"
    )
    chat = [{"role": "user", "content": body}]
    return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + "Answer: ("
