"""Time log-likelihood scoring with each question's options packed after one copy of its context
against one row per option, on a case's own model and questions.

Three scorers run the same questions, call by call in alternation, and the median of
``--repeats`` timings of each is printed with the ratios: the transformers backend packed (the
default where the backend can pack), the transformers backend with one row per option, and
TransformerLens (one row per option; the CPU default). The script fails unless the three pick the
same answer for every question. ``--pad-tokens`` puts about that many tokens of the other sets'
question text before each question (as ``dsg attack dilution --placement before
--benign-questions`` does), where one copy of the context instead of four matters most.

    python benchmarks/bench_cloze.py                                   # smollm2-bio, unpadded
    python benchmarks/bench_cloze.py --pad-tokens 200 --questions 16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from dsg.api.interfaces import ClozeCase
from dsg.api.prompts import choose_cloze_format, render_cloze
from dsg.engine.backends.transformer_lens import TransformerLensBackend
from dsg.engine.session import Session
from dsg.scoring.loglik import ClozeScorer, choose


def padding_text(session: Session, sets: list, tokens: int) -> str:
    """Question text of every set but the first, joined, cut to about ``tokens`` tokens."""
    words = " ".join(q.question for s in sets[1:] for q in s.questions)
    ids = session.backend().tokenizer.encode(words, add_special_tokens=False)[:tokens]
    return str(session.backend().tokenizer.decode(ids)).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="smollm2-bio")
    parser.add_argument("--questions", type=int, default=40, help="of the case's first set")
    parser.add_argument("--pad-tokens", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    session = Session.open({"case": args.case, "backend": "transformers", "device": args.device})
    hook = session.sae().hook_name
    hf = session.backend()
    tl = TransformerLensBackend(session.model().model, hf.tokenizer)
    case = session.case
    fmt = choose_cloze_format(
        case.cloze_format() if isinstance(case, ClozeCase) else None, hf.tokenizer
    )
    sets = case.eval_sets(session.data)
    first = sets[0]
    pad = padding_text(session, sets, args.pad_tokens) if args.pad_tokens else ""
    scorers = {
        "transformers, packed": ClozeScorer(hf, hook, args.batch_size, packed=True),
        "transformers, a row per option": ClozeScorer(hf, hook, args.batch_size, packed=False),
        "transformer_lens, a row per option": ClozeScorer(tl, hook, args.batch_size),
    }
    items = []
    for question in first.questions[: args.questions]:
        if pad:
            question = dataclasses.replace(question, question=f"{pad} {question.question}")
        context, continuations, _ = render_cloze(fmt, hf.tokenizer, first, question)
        items.append(
            scorers["transformers, packed"].encode(context, continuations, question.choices)
        )
    context_tokens = statistics.mean(len(item.context) for item in items)
    print(
        f"{args.case}: {len(items)} questions of {first.name}, contexts of {context_tokens:.0f} "
        f"tokens on average, batch {args.batch_size}, {args.threads} threads, {args.device}"
    )
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    answers: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            answers[name] = choose(scorer.logliks(items))
            seconds[name].append(time.perf_counter() - start)
    picked = list(answers.values())
    if any(not torch.equal(picked[0], other) for other in picked[1:]):
        raise SystemExit("the scorers picked different answers")
    packed = statistics.median(seconds["transformers, packed"])
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:36}{median:8.2f} s  {median / packed:5.2f}x the packed time")


if __name__ == "__main__":
    main()
