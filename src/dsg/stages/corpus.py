"""Forget and retain token rows, built as the reference builds them (reference algorithm: Data).

Documents longer than ``min_chars`` characters are kept; the forget documents are a seeded
random sample (and order), the retain documents stay in corpus order. Each list is joined with
the tokenizer's EOS string, cut into 20 character chunks, tokenised with BOS, and reshaped into
rows of ``seq_len`` tokens whose first token is overwritten with BOS. The rows are shuffled
with a seeded generator and both sides are cut to the same number of rows.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dsg.api.data import read_text_corpus
from dsg.core.artifacts import fingerprint_texts
from dsg.core.errors import UserError

if TYPE_CHECKING:
    import torch

    from dsg.engine.session import Session

N_CHUNKS = 20
"""The reference cuts the joined text into this many character chunks before tokenising."""


@dataclass(frozen=True)
class Documents:
    """The filtered documents of both corpora, with content hashes for artifact keys."""

    forget: list[str]
    retain: list[str]
    held_out: list[str] = field(default_factory=list)
    """Forget documents kept out of ``forget`` by ``relearn_holdout``, for relearning only."""

    @property
    def forget_fingerprint(self) -> str:
        return fingerprint_texts(self.forget)

    @property
    def retain_fingerprint(self) -> str:
        return fingerprint_texts(self.retain)


def filter_docs(docs: list[str], min_chars: int) -> list[str]:
    """Documents with strictly more than ``min_chars`` characters, in their original order."""
    return [doc for doc in docs if len(doc) > min_chars]


def sample_forget(docs: list[str], dataset_size: int, seed: int) -> list[str]:
    """A seeded random subset *and order* of the forget documents, as the reference draws it."""
    return random.Random(seed).sample(docs, min(dataset_size, len(docs)))


def unsampled_forget(docs: list[str], dataset_size: int, seed: int) -> list[str]:
    """The forget documents :func:`sample_forget` leaves out, in corpus order: text the
    statistics (hence the feature selection) never saw. ``random.sample`` draws the same
    positions for any population of the same length, so sampling the positions finds them."""
    drawn = set(random.Random(seed).sample(range(len(docs)), min(dataset_size, len(docs))))
    return [doc for i, doc in enumerate(docs) if i not in drawn]


def chunk_text(text: str, n_chunks: int = N_CHUNKS) -> list[str]:
    """``n_chunks`` character slices of length ``ceil(len/n)``; tail ones may be short or empty."""
    size = (len(text) - 1) // n_chunks + 1
    return [text[i * size : (i + 1) * size] for i in range(n_chunks)]


def tokenize_and_concat(tokenizer: Any, docs: list[str], seq_len: int) -> torch.Tensor:
    """Token rows ``[rows, seq_len]`` from EOS-joined, chunked text; column 0 is always BOS.

    Chunks are tokenised one by one rather than as a padded batch: dropping the pads of a padded
    batch gives the same stream, and a tokenizer without a pad token works too.
    """
    import torch

    if tokenizer.eos_token is None or tokenizer.bos_token_id is None:
        raise UserError("the model's tokenizer has no EOS or BOS token; dsg needs both")
    text = tokenizer.eos_token.join(docs)
    ids: list[int] = []
    for chunk in chunk_text(text):
        ids.extend(tokenizer(chunk)["input_ids"])
    stream = torch.tensor(ids, dtype=torch.long)
    if tokenizer.pad_token_id is not None:
        stream = stream[stream != tokenizer.pad_token_id]
    n_rows = stream.numel() // seq_len
    rows = stream[: n_rows * seq_len].reshape(n_rows, seq_len).clone()
    rows[:, 0] = tokenizer.bos_token_id
    return rows


def n_rows_used(dataset_size: int, fraction: float, n_forget: int, n_retain: int) -> int:
    """Rows kept on each side: ``min(int(size·f/100), int(Nf·f/100), int(Nr·f/100))``."""
    return min(
        int(dataset_size * fraction / 100),
        int(n_forget * fraction / 100),
        int(n_retain * fraction / 100),
    )


def is_held_out(doc: str, seed: int, percent: float) -> bool:
    """Whether ``doc`` is in the relearning hold-out: a seeded hash of its text, read as a
    number in [0, 100), falls below ``percent``. It depends on the text alone, not on its
    position or on the other documents, so adding documents moves none in or out."""
    digest = hashlib.sha256(f"{seed}\0{doc}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < percent


def case_texts(session: Session, side: Literal["forget", "retain"]) -> list[str]:
    """The ``side`` corpus's documents: the file the user passed (``--forget-corpus``,
    ``--retain-corpus``), read here for every case, so no case can leave it unread; else the
    case's own."""
    data = session.data
    given = data.forget_corpus if side == "forget" else data.retain_corpus
    if given is not None:
        return read_text_corpus(given)
    case = session.case
    return case.forget_texts(data) if side == "forget" else case.retain_texts(data)


def load_documents(session: Session) -> Documents:
    """Both corpora of the session's case, filtered by length, the forget side without its
    relearning hold-out; an empty one is a UserError."""
    s = session.settings
    forget = filter_docs(case_texts(session, "forget"), s.min_chars)
    held_out = [d for d in forget if is_held_out(d, s.seed, s.relearn_holdout)]
    docs = {
        "forget": [d for d in forget if not is_held_out(d, s.seed, s.relearn_holdout)],
        "retain": filter_docs(case_texts(session, "retain"), s.min_chars),
    }
    if forget and not docs["forget"]:
        raise UserError(
            f"relearn_holdout {s.relearn_holdout:g}% holds out all {len(forget)} forget documents "
            f"of case {s.case!r}, so none is left for the statistics; pass a smaller "
            "--relearn-holdout (e.g. 25)"
        )
    for side, kept in docs.items():
        if not kept:
            raise UserError(
                f"the {side} corpus of case {s.case!r} has no document longer than "
                f"{s.min_chars} characters; set a smaller min_chars in the config file or pass "
                f"longer documents with --{side}-corpus"
            )
    return Documents(forget=docs["forget"], retain=docs["retain"], held_out=held_out)


def build_rows(
    tokenizer: Any,
    documents: Documents,
    *,
    seq_len: int,
    dataset_size: int,
    dataset_fraction: float,
    seed: int,
    case: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled forget and retain rows, cut to the same count (reference algorithm: Data)."""
    import torch

    forget = tokenize_and_concat(
        tokenizer, sample_forget(documents.forget, dataset_size, seed), seq_len
    )
    retain = tokenize_and_concat(tokenizer, documents.retain, seq_len)
    label = f" of case {case!r}" if case else ""
    for side, rows in (("forget", forget), ("retain", retain)):
        if rows.shape[0] == 0:
            raise UserError(
                f"the {side} corpus{label} is shorter than one row of {seq_len} tokens; "
                f"set a smaller seq_len in the config file or pass more text with --{side}-corpus"
            )
    generator = torch.Generator().manual_seed(seed)
    forget = forget[torch.randperm(forget.shape[0], generator=generator)]
    retain = retain[torch.randperm(retain.shape[0], generator=generator)]
    n = n_rows_used(dataset_size, dataset_fraction, forget.shape[0], retain.shape[0])
    if n == 0:
        raise UserError(
            f"dataset_fraction {dataset_fraction}% of {forget.shape[0]} forget and "
            f"{retain.shape[0]} retain rows{label} leaves no row; raise dataset_fraction or "
            "dataset_size, or lower seq_len, in the config file"
        )
    return forget[:n], retain[:n]
