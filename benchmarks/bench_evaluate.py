"""Benchmark the MCQ engine against a reference-style loop on the same model and sweep.

Both modes compute the question subsets (24 answer orders, with and without the question text),
the baseline and every sweep configuration. The reference mode does it the way the reference
code does: one prompt per forward pass, logits at every position over the whole vocabulary,
every prompt re-run for every configuration with the guardrail hooked in. The engine mode uses
dsg's batched, answer-position-only, split-at-the-hook engine. Each mode runs in its own
process, so its peak resident memory is its own; the script checks that both give the same
subsets and accuracies, then prints times, the speed ratio and peak memory.

    python benchmarks/bench_evaluate.py --case tiny
    python benchmarks/bench_evaluate.py --case tiny-wide
    python benchmarks/bench_evaluate.py --case organism --max-questions 40
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dsg.api.interfaces import EvalSet

ROOT = Path(__file__).resolve().parent.parent
TINY_CASES = ("tiny", "tiny-wide")


def rss_mib() -> float:
    """Current resident memory of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_session(args: argparse.Namespace) -> Any:
    """A session on the chosen case; ``tiny`` is the test suite's in-process stand-in."""
    from dsg.engine.session import Session

    case = args.case
    cli: dict[str, Any] = {
        "case": "tiny" if case in TINY_CASES else case,
        "out": args.out,
        "questions": args.questions,
        "batch_size": args.batch_size,
    }
    if case not in TINY_CASES:
        return Session.open(cli)
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest  # noqa: F401  (offline environment variables)
    import tiny
    from tiny import TinyWorld, build_sae, tiny_registry

    def eval_sets(self: Any, data: Any) -> list[Any]:
        return [
            EvalSet("tiny-target", "pathogens", tiny.tiny_questions("vex", args.tiny_questions)),
            EvalSet("tiny-side", "cities", tiny.tiny_questions("orla", args.tiny_questions)),
        ]

    tiny.TinyCase.eval_sets = eval_sets  # more questions than the test suite needs
    world = TinyWorld(args.out / "tiny-world", threshold=0.3)
    if case == "tiny-wide":
        world.model = wide_model(world.tokenizer)
        world.hook_name, world.hook_layer = "blocks.1.hook_resid_post", 1
        world.sae = build_sae(world.model.cfg.d_model, 1024, hook_name=world.hook_name)
    return Session.open({**cli, "multipliers": (20.0,)}, reg=tiny_registry(world))


def wide_model(tokenizer: Any) -> Any:
    """The tiny case's Gemma-2 shape at a size where full-vocabulary logits cost something:
    6 layers, d_model 256, a 65,536-entry unembedding (ids past the tokenizer are unused)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=6,
        d_model=256,
        n_heads=4,
        d_head=64,
        d_mlp=1024,
        n_ctx=512,
        d_vocab=65536,
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=64,
        gated_mlp=True,
        final_rms=True,
        use_normalization_before_and_after=True,
        attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0,
        original_architecture="Gemma2ForCausalLM",
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    return model.eval()


def limited(eval_sets: list[Any], max_questions: int | None) -> list[Any]:
    if max_questions is None:
        return eval_sets
    return [EvalSet(e.name, e.subject, e.questions[:max_questions]) for e in eval_sets]


def reference_predict(model: Any, answer_ids: Any, ids: list[int], hook: Any = None) -> int:
    """One prompt, full logits, softmax over the vocabulary at the last token."""
    import torch

    tokens = torch.tensor([ids], device=model.cfg.device)
    if hook is None:
        logits = model(tokens)
    else:
        logits = model.run_with_hooks(tokens, fwd_hooks=[hook])
    probs = logits[0, -1].softmax(-1)[answer_ids.to(logits.device)].amax(0)
    return int(probs.argmax())


def reference_subsets(model: Any, scorer: Any, fmt: Any, eval_set: Any) -> dict[str, list[int]]:
    """As the reference: all 24 orders, with and without the question, for every question."""
    from dsg.api.prompts import render_question
    from dsg.stages.evaluate.subsets import PERMUTATIONS, is_tricky

    verdicts = {}
    for with_question in (True, False):
        right = []
        for q in eval_set.questions:
            rendered = [
                render_question(
                    fmt, scorer.tokenizer, eval_set, q, order, with_question=with_question
                )
                for order in PERMUTATIONS
            ]
            ids = scorer.encode([text for text, _ in rendered])
            right.append(
                all(  # a list, not a generator: the reference runs every order
                    [
                        reference_predict(model, scorer.answer_ids, row) == gold
                        for row, (_, gold) in zip(ids, rendered, strict=True)
                    ]
                )
            )
        verdicts[with_question] = right
    correct = [i for i, ok in enumerate(verdicts[True]) if ok]
    return {
        "correct": correct,
        "correct-iff-question": [i for i in correct if not verdicts[False][i]],
        "correct-no-tricks": [i for i in correct if not is_tricky(eval_set.questions[i])],
        "all": list(range(len(eval_set.questions))),
    }


def run_mode(args: argparse.Namespace) -> dict:
    """Subsets and sweep in one mode; returns results, timings and memory."""
    import torch

    from dsg.api.prompts import choose_format, render_question
    from dsg.core.artifacts import RunDir
    from dsg.engine.backends.transformer_lens import TransformerLensBackend
    from dsg.scoring.letter import Scorer
    from dsg.stages import select
    from dsg.stages.evaluate import evaluate, subsets
    from dsg.stages.evaluate.modes import LetterMode

    torch.set_num_threads(1)
    mode, questions = args.mode, args.questions
    session = open_session(args)
    selections = select.ensure(session)  # cached by the parent: loading only
    model, sae = session.checked_pair()
    eval_sets = limited(session.case.eval_sets(session.data), args.max_questions)
    tok = model.tokenizer
    fmt = choose_format(session.case.prompt_format(), tok)
    backend = TransformerLensBackend(model.model, tok)
    scorer = Scorer(backend, sae.hook_name, session.settings.batch_size)
    configs = evaluate.expand(selections, session)
    rss_loaded = rss_mib()
    times: dict[str, float] = {}
    extra: dict[str, float] = {}

    with torch.inference_mode():
        start = time.perf_counter()
        if mode == "engine":

            def predict(texts: list[str], group: int = 1) -> list[int]:
                return scorer.predict(scorer.encode(texts), group).tolist()

            found = {e.name: subsets.compute(predict, fmt, tok, e) for e in eval_sets}
        else:
            found = {e.name: reference_subsets(model.model, scorer, fmt, e) for e in eval_sets}
        times["subsets"] = time.perf_counter() - start
        if mode == "engine":  # the same 48 prompts per question as the reference, batched
            start = time.perf_counter()
            for e in eval_sets:
                for with_question in (True, False):
                    predict(
                        [
                            render_question(fmt, tok, e, q, order, with_question=with_question)[0]
                            for q in e.questions
                            for order in subsets.PERMUTATIONS
                        ]
                    )
            extra["subsets_every_order"] = time.perf_counter() - start

        start = time.perf_counter()
        chosen = {e.name: found[e.name][questions] for e in eval_sets}
        letters = LetterMode(scorer, fmt)
        prompts = [letters.prompts(e, chosen[e.name]) for e in eval_sets]
        accuracies: dict[str, dict[str, int]] = {}
        if mode == "engine":
            baselines = {p.name: letters.baseline(p) for p in prompts}
            with tempfile.TemporaryDirectory() as scratch:
                run_dir = RunDir(Path(scratch))
                sweep = evaluate.Sweep(run_dir, letters, session, prompts, baselines, {})
                results = sweep.results(configs)
            for r in results:
                label = json.dumps(r.config.describe(), sort_keys=True)
                accuracies[label] = {name: c.correct for name, c in r.counts.items()}
        else:
            for p in prompts:
                for ids in p.items:
                    reference_predict(model.model, scorer.answer_ids, ids)  # the baseline pass
            for config in configs:
                strategy = session.registry.get("strategies", config.strategy)
                clamp = strategy.build(
                    sae.sae,
                    torch.tensor(config.features),
                    config.threshold or 0.0,
                    config.multiplier,
                )
                label = json.dumps(config.describe(), sort_keys=True)
                accuracies[label] = {}
                for p in prompts:
                    right = 0
                    for ids, gold in zip(p.items, p.gold.tolist(), strict=True):
                        mask = torch.ones(
                            1, len(ids), dtype=torch.bool, device=model.model.cfg.device
                        )
                        hook = (sae.hook_name, lambda r, hook, c=clamp, m=mask: c(r, m))
                        right += (
                            reference_predict(model.model, scorer.answer_ids, ids, hook) == gold
                        )
                    accuracies[label][p.name] = right
        times["sweep"] = time.perf_counter() - start

    return {
        "mode": mode,
        "subsets": found,
        "accuracies": accuracies,
        "times": times,
        "extra_times": extra,
        "configs": len(configs),
        "batch_size": session.settings.batch_size,
        "prompts": {p.name: len(p.items) for p in prompts},
        "rss_after_load_mib": rss_loaded,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="tiny")
    parser.add_argument(
        "--questions",
        default="all",
        help="subset swept (the tiny model knows no question robustly: 'all')",
    )
    parser.add_argument(
        "--max-questions",
        type=int,
        default=None,
        help="first N questions of each set, to bound the reference loop",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="engine rows per pass")
    parser.add_argument(
        "--tiny-questions", type=int, default=6, help="questions per set of the tiny cases"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mode", choices=["engine", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    args.out = args.out or Path(tempfile.mkdtemp(prefix="dsg-bench-"))
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    from dsg.stages import select

    select.ensure(open_session(args))  # both modes then load it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    results = {}
    for mode in ("engine", "reference"):
        command = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--case",
            args.case,
            "--questions",
            args.questions,
            "--out",
            str(args.out),
            "--tiny-questions",
            str(args.tiny_questions),
        ]
        if args.max_questions is not None:
            command += ["--max-questions", str(args.max_questions)]
        if args.batch_size is not None:
            command += ["--batch-size", str(args.batch_size)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])

    engine, reference = results["engine"], results["reference"]
    assert engine["subsets"] == reference["subsets"], "the subsets differ"
    assert engine["accuracies"] == reference["accuracies"], "the sweep accuracies differ"
    print(
        f"case {args.case}: {engine['configs']} configurations, batch size {engine['batch_size']}, "
        f"questions per set {engine['prompts']} (subset {args.questions!r})"
    )
    print("subsets and every configuration's per-set accuracy agree between the two modes")
    print(
        f"{'':14}{'subsets s':>11}{'sweep s':>10}{'total s':>10}"
        f"{'RSS loaded MiB':>16}{'peak RSS MiB':>14}"
    )
    for name, r in results.items():
        t = r["times"]
        print(
            f"{name:14}{t['subsets']:11.2f}{t['sweep']:10.2f}{sum(t.values()):10.2f}"
            f"{r['rss_after_load_mib']:16.0f}{r['peak_rss_mib']:14.0f}"
        )
    ratio = {k: reference["times"][k] / engine["times"][k] for k in engine["times"]}
    total = sum(reference["times"].values()) / sum(engine["times"].values())
    print(
        f"speed-up: subsets {ratio['subsets']:.1f}x, sweep {ratio['sweep']:.1f}x, "
        f"total {total:.1f}x"
    )
    every = engine["extra_times"]["subsets_every_order"]
    print(
        f"engine on all 48 prompts per question (no early exit): {every:.2f} s, "
        f"{reference['times']['subsets'] / every:.1f}x faster than the reference's subsets"
    )


if __name__ == "__main__":
    main()
