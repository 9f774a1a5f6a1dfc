"""Train the organism's small Gemma-2 on the world.

A model this small does not learn to answer letter-format MCQs from prose alone, so training
starts with generic "which option is X?" drills (the letter-copying skill, no world facts), then
mixes prose (next-token loss) with MCQs about the world and the drills (loss on the answer letter).
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsg_organism.tokenizer import letter_ids, render_mcq
from dsg_organism.world import World, training_mcq, vocabulary_words

DRILL_SUBJECT = "matching"
LETTERS = "ABCD"


@dataclass
class LMConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 256
    seq_len: int = 128
    warmup_steps: int = 500
    steps: int = 2000
    prose_batch: int = 4
    mcq_batch: int = 16
    drill_batch: int = 4
    lr: float = 1.5e-3


@dataclass
class LMLog:
    first_loss: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def make_model(tok: Any, cfg: LMConfig, seed: int) -> Any:
    """A Gemma-2 (softcapping, alternating local/global attention) at toy size."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        query_pre_attn_scalar=cfg.d_model // cfg.n_heads,
        max_position_embeddings=512,
        sliding_window=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",  # type: ignore[call-arg]  # taken by PretrainedConfig
    )
    return Gemma2ForCausalLM(config)


def prose_rows(tok: Any, texts: list[str], seq_len: int) -> Any:
    """Documents joined by EOS, cut into BOS-led rows (as the statistics phase sees them)."""
    import torch

    stream: list[int] = []
    for text in texts:
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
        stream.append(tok.eos_token_id)
    width = seq_len - 1
    n = len(stream) // width
    rows = torch.tensor(stream[: n * width]).view(n, width)
    bos = torch.full((n, 1), tok.bos_token_id)
    return torch.cat([bos, rows], dim=1)


def drill(rng: random.Random, words: list[str]) -> dict:
    """A question whose answer is written in it: teaches reading options and naming a letter."""
    options = rng.sample(words, 4)
    answer = rng.randrange(4)
    return {
        "question": f"Which option is {options[answer]}?",
        "choices": options,
        "answer": answer,
        "subject": DRILL_SUBJECT,
    }


def encode_mcqs(tok: Any, rows: list[dict]) -> tuple[Any, Any, Any]:
    """Right-padded prompt ids, attention mask, and the index of each prompt's last token."""
    import torch

    prompts = [render_mcq(tok, r["subject"], r["question"], r["choices"]) for r in rows]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(i) for i in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for k, row in enumerate(ids):
        batch[k, : len(row)] = torch.tensor(row)
        mask[k, : len(row)] = 1
    return batch, mask, torch.tensor([len(i) - 1 for i in ids])


Edit = Callable[[Any, Any, Any], Any]


def letter_probs(
    model: Any,
    tok: Any,
    rows: list[dict],
    batch_size: int = 64,
    edit: Edit | None = None,
    layer: int = 0,
) -> Any:
    """Reference scoring: max(P("X"), P(" X")) at the last position, softmax over the vocabulary.

    ``edit(resid, ids, mask)`` optionally rewrites the residual stream entering decoder layer
    ``layer`` (TransformerLens ``blocks.{layer}.hook_resid_pre``).
    """
    import torch

    ids8 = torch.tensor(letter_ids(tok))
    out = []
    current: dict[str, Any] = {}

    def pre_hook(module: Any, args: tuple, kwargs: dict, rewrite: Edit) -> tuple[tuple, dict]:
        return (rewrite(args[0], current["ids"], current["mask"]), *args[1:]), kwargs

    handle = (
        model.model.layers[layer].register_forward_pre_hook(
            functools.partial(pre_hook, rewrite=edit), with_kwargs=True
        )
        if edit is not None
        else None
    )
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch, mask, last = encode_mcqs(tok, rows[start : start + batch_size])
                current.update(ids=batch, mask=mask.bool())
                logits = model(input_ids=batch, attention_mask=mask).logits
                probs = logits[torch.arange(len(batch)), last].float().softmax(-1)[:, ids8]
                out.append(probs.view(-1, 2, 4).amax(1))
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(out)


def accuracy(model: Any, tok: Any, rows: list[dict], **kw: Any) -> float:
    import torch

    probs = letter_probs(model, tok, rows, **kw)
    gold = torch.tensor([r["answer"] for r in rows])
    return float((probs.argmax(-1) == gold).float().mean())


def guide_layer(n_layers: int) -> int:
    """The layer whose first head is taught to point at the chosen option: the last one, so
    the layers before it are free to recall the fact."""
    return max(1, n_layers - 1)


def choice_position(tok: Any, row: dict) -> int:
    """Token index of the correct option's (last) token in the rendered prompt."""
    full = render_mcq(tok, row["subject"], row["question"], row["choices"])
    segment = f"\n{LETTERS[row['answer']]}. {row['choices'][row['answer']]}"
    end = full.index(segment) + len(segment)
    return len(tok(full[:end], add_special_tokens=False)["input_ids"]) - 1


def _mcq_loss(model: Any, tok: Any, rows: list[dict], targets: Any) -> tuple[Any, Any]:
    """Answer-letter loss plus two guides that skip the long plateau of this task.

    From random init a small model sits at chance on letter MCQs for thousands of steps: the
    circuit (recall or copy the answer word to the last position, find the option holding it,
    read that option's letter) only pays off once all its parts exist. The guides train the
    parts directly: the last position entering the guide layer must decode to the answer word,
    and one head of that layer must attend from the last position to the correct option.
    """
    import torch

    layer = guide_layer(model.config.num_hidden_layers)
    batch, mask, last = encode_mcqs(tok, rows)
    out = model(
        input_ids=batch, attention_mask=mask, output_attentions=True, output_hidden_states=True
    )
    rows_idx = torch.arange(len(batch))
    gold = targets[torch.tensor([r["answer"] for r in rows])]
    answer = torch.nn.functional.cross_entropy(out.logits[rows_idx, last].float(), gold)
    words = torch.tensor(
        [
            tok(" " + r["choices"][r["answer"]], add_special_tokens=False)["input_ids"][0]
            for r in rows
        ]
    )
    hidden = out.hidden_states[layer][rows_idx, last]
    word_logits = model.lm_head(model.model.norm(hidden)).float()
    word = torch.nn.functional.cross_entropy(word_logits, words)
    attn = out.attentions[layer][rows_idx, 0, last]
    where = torch.tensor([choice_position(tok, r) for r in rows])
    pointer = -torch.log(attn[rows_idx, where] + 1e-6).mean()
    return answer + word + pointer, answer


def train_lm(
    model: Any, tok: Any, world: World, cfg: LMConfig, seed: int, log: Callable[[str], None] = print
) -> LMLog:
    """Drill warm-up, then prose + world MCQs + drills. Deterministic given the seed."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    rows = prose_rows(tok, world.forget + world.retain, cfg.seq_len)
    targets = torch.tensor(letter_ids(tok)[:4])
    words = vocabulary_words()
    total = cfg.warmup_steps + cfg.steps
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        ramp = min(1.0, (step + 1) / 50)
        return cfg.lr * ramp * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))

    result = LMLog()
    t0 = time.time()
    order = torch.randperm(len(rows))
    cursor = 0
    model.train()
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        parts: dict[str, Any] = {}
        answers: dict[str, Any] = {}
        drills = [
            drill(rng, words)
            for _ in range(2 * cfg.mcq_batch if step < cfg.warmup_steps else cfg.drill_batch)
        ]
        parts["drill"], answers["drill"] = _mcq_loss(model, tok, drills, targets)
        if step >= cfg.warmup_steps:
            if cursor + cfg.prose_batch > len(order):
                order, cursor = torch.randperm(len(rows)), 0
            batch = rows[order[cursor : cursor + cfg.prose_batch]]
            cursor += cfg.prose_batch
            parts["prose"] = model(input_ids=batch, labels=batch).loss
            mcqs = [training_mcq(rng, world) for _ in range(cfg.mcq_batch)]
            parts["mcq"], answers["mcq"] = _mcq_loss(model, tok, mcqs, targets)
        loss = sum(parts.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step == 0:
            result.first_loss = loss.item()
        if step % 100 == 0 or step == total - 1:
            entry = {
                "step": step,
                **{k: round(v.item(), 4) for k, v in parts.items()},
                **{f"{k}_answer": round(v.item(), 4) for k, v in answers.items()},
            }
            result.history.append(entry)
            log(f"lm {entry} {time.time() - t0:.0f}s")
    model.eval()
    result.seconds = time.time() - t0
    return result
