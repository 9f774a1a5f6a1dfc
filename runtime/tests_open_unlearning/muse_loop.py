"""MUSE's generation metrics as open-unlearning computes them, written here from its documented
behaviour (open-unlearning is not on PyPI): prompts built from the model config's template
arguments with the few-shot split in front, BOS added by the tokenizer, batches left-padded,
greedy generation, the output cut at the EOS text and the stop words and stripped, and
ROUGE-L F1 (rouge-score, stemmed) against the reference answer or continuation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
KNOWMEM = {"batch_size": 16, "max_new_tokens": 32, "max_length": 512}
VERBMEM = {"batch_size": 8, "max_new_tokens": 128}


@dataclass(frozen=True)
class Template:
    """open-unlearning's ``template_args`` for a model without a chat template."""

    user_start_tag: str
    user_end_tag: str
    asst_start_tag: str
    asst_end_tag: str

    def prompt(self, shots: Sequence[tuple[str, str]], question: str) -> str:
        """The few-shot examples, then the question, up to the answer's start tag."""
        text = "".join(self.ask(q) + a + self.asst_end_tag for q, a in shots)
        return text + self.ask(question)

    def ask(self, question: str) -> str:
        return self.user_start_tag + question + self.user_end_tag + self.asst_start_tag


def knowmem_prompts(
    template: Template, rows: list[dict[str, str]], shots: list[dict[str, str]], tok: Any
) -> list[list[int]]:
    pairs = [(s["question"], s["answer"]) for s in shots]
    return [
        tok(
            template.prompt(pairs, r["question"]),
            add_special_tokens=True,
            max_length=KNOWMEM["max_length"],
            truncation=True,
        )["input_ids"]
        for r in rows
    ]


def verbmem_prompts(rows: list[dict[str, str]], tok: Any) -> list[list[int]]:
    return [tok(r["prompt"], add_special_tokens=True)["input_ids"] for r in rows]


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def generate(
    model: Any,
    tok: Any,
    prompts: list[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    stopwords: Sequence[str] = (),
) -> list[str]:
    """Greedy continuations, batch by batch, cut at the EOS text and the stop words."""
    import torch

    cut = [tok.decode([tok.eos_token_id]), *stopwords]
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded(prompts[start : start + batch_size], tok.pad_token_id)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.eos_token_id,
            )
        for row in tok.batch_decode(
            out[:, ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=True
        ):
            for word in cut:
                if word and word in row:
                    row = row.split(word)[0]
            texts.append(row.strip())
    return texts


def rouge_l_f1(generations: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [
        scorer.score(ref, gen)["rougeL"].fmeasure
        for gen, ref in zip(generations, references, strict=True)
    ]


def knowmem(
    model: Any, tok: Any, template: Template, rows: list[dict], shots: list[dict]
) -> tuple[list[str], list[float]]:
    gens = generate(
        model,
        tok,
        knowmem_prompts(template, rows, shots, tok),
        batch_size=KNOWMEM["batch_size"],
        max_new_tokens=KNOWMEM["max_new_tokens"],
        stopwords=KNOWMEM_STOPWORDS,
    )
    return gens, rouge_l_f1(gens, [r["answer"] for r in rows])


def verbmem(model: Any, tok: Any, rows: list[dict]) -> tuple[list[str], list[float]]:
    gens = generate(
        model,
        tok,
        verbmem_prompts(rows, tok),
        batch_size=VERBMEM["batch_size"],
        max_new_tokens=VERBMEM["max_new_tokens"],
    )
    return gens, rouge_l_f1(gens, [r["gt"] for r in rows])


MIA = {"batch_size": 8, "k": 0.4, "max_length": 2048}
"""open-unlearning's MUSE ``mia_min_k``: its batch size, ``k``, and ``CompletionDataset``'s
``max_length``."""
IGNORE_INDEX = -100


def completion_rows(tok: Any, texts: list[str]) -> list[list[int]]:
    """``CompletionDataset`` with no prefix: the text with the tokenizer's special tokens, cut
    ``max_length`` tokens after the (empty) prefix's own tokens."""
    prefix = len(tok("", add_special_tokens=True)["input_ids"])
    return [
        tok(t, add_special_tokens=True)["input_ids"][: prefix + MIA["max_length"]] for t in texts
    ]


def min_k_scores(model: Any, tok: Any, texts: list[str]) -> list[float]:
    """Per text: labels on every token but the first, batches right-padded with the pad id
    (label -100, attention where the id is not the pad id), the forward pass with the labels;
    the next-token log-probabilities of the labelled tokens without the last; minus the mean of
    the lowest ``k`` of them."""
    import numpy as np
    import torch

    rows = completion_rows(tok, texts)
    scores = []
    for start in range(0, len(rows), MIA["batch_size"]):
        chunk = [torch.tensor(r) for r in rows[start : start + MIA["batch_size"]]]
        labels = [torch.cat([torch.tensor([IGNORE_INDEX]), r[1:]]) for r in chunk]
        ids = torch.nn.utils.rnn.pad_sequence(
            chunk, batch_first=True, padding_value=tok.pad_token_id
        )
        lab = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        with torch.no_grad():
            logits = model(
                input_ids=ids, attention_mask=ids.ne(tok.pad_token_id), labels=lab
            ).logits
        picked = torch.log_softmax(logits, dim=-1)[:, :-1, :].gather(2, ids[:, 1:].unsqueeze(-1))
        for i in range(len(chunk)):
            where = (lab[i] != IGNORE_INDEX).nonzero(as_tuple=True)[0][:-1]
            lp = picked[i, where[0] - 1 : where[-1], 0].numpy()
            lowest = np.sort(lp)[: max(1, int(len(lp) * MIA["k"]))]
            scores.append(float(-np.mean(lowest)))
    return scores


def mia_min_k_auc(forget: list[float], holdout: list[float]) -> float:
    """scikit-learn's ROC AUC with the forget texts as label 0, as open-unlearning labels them."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([0] * len(forget) + [1] * len(holdout), forget + holdout))


def privleak(auc: float, retain_auc: float) -> float:
    """MUSE's privacy leakage as open-unlearning reports it: the relative difference, in
    percent, of the model's ``1 - AUC`` from the retain model's."""
    return ((1 - auc) - (1 - retain_auc)) / ((1 - retain_auc) + 1e-10) * 100
