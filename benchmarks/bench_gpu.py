"""The GPU benchmark: dsg on a random-weight model of a real shape, with no download.

It builds, under ``--out``: a random-weight transformers model of the named shape (gemma-2-2b: 26
layers, d_model 2304, 8 heads / 4 KV heads, head_dim 256, intermediate 9216, vocabulary 256,000,
softcaps 50/30, sliding window 4096) saved as a local directory, a random 16k JumpReLU SAE at
``blocks.3.hook_resid_post`` in sae_lens format, and a ``--data-dir`` mirror with stand-in
WMDP-bio and MMLU question sets of the real sizes (1,273 + 725 questions, prompts of about 560
tokens) plus small forget and retain corpora. Then it times:

(a) ``dsg evaluate --case bio --questions all`` with each backend and dtype (8 configurations; the
    random SAE fires on every row, the worst case). Each run sweeps the first ``--eval-questions``
    questions of each set (by dtype) and is scaled to the whole bio-sized run from the report's
    own stage times, so the whole benchmark fits in 8 minutes on one H100-class GPU;
(b) the reference's schedule (float32 and the evaluate dtype, batch 1, logits at every position,
    every prompt re-run for every configuration) on a sample of prompts, extrapolated;
(c) the guardrail's overhead on a transformers model (``dsg.hf.attach`` vs none): one forward at
    batch 1 and 16, and greedy generation per token with every row firing (the worst case) and
    with none firing (a benign prompt); medians of many repetitions in one run, plain and
    guarded call by call in alternation (``--repetitions``, ``--new-tokens``).

Every figure is written to ``--out/results.json`` as soon as it is measured, so a run stopped by a
time limit keeps what it measured. ``--shape tiny`` runs the same steps on a tiny model and small
sets, on the CPU, in a few minutes.

    python benchmarks/bench_gpu.py --shape gemma-2-2b --device cuda --out /tmp/dsg-bench
    python benchmarks/bench_gpu.py --shape tiny --device cpu --out /tmp/dsg-bench-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CUDA_CHILDREN = True  # set in main: whether the evaluate processes run on a GPU
HOOK_LAYER = {"gemma-2-2b": 3, "tiny": 1}
N_CONFIGS = 8  # n_features 20, 50, 100, 200 x strategies dynamic, static
MMLU_SUBJECTS = (
    "high_school_us_history",
    "college_computer_science",
    "high_school_geography",
    "human_aging",
)

SHAPES: dict[str, dict[str, Any]] = {
    "gemma-2-2b": {
        "model": {
            "num_hidden_layers": 26,
            "hidden_size": 2304,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "intermediate_size": 9216,
            "vocab_size": 256000,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "sliding_window": 4096,
            "query_pre_attn_scalar": 256,
            "max_position_embeddings": 8192,
        },
        "d_sae": 16384,
        "n_features": (20, 50, 100, 200),  # the bio case's own
        "bio": 1273,
        "mmlu": (204, 100, 198, 223),  # 725, the real subject sizes
        "prompt_tokens": 560,
        "eval_questions": {"bfloat16": 300, "float16": 300, "float32": 32},
        "batch_size": {"bfloat16": 32, "float16": 32, "float32": 16},
        "reference_sample": 16,
        "overhead_tokens": 512,
        "repetitions": 30,
        "new_tokens": 32,
    },
    "tiny": {
        "model": {
            "num_hidden_layers": 4,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 128,
            "vocab_size": None,  # the tokenizer's
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "sliding_window": 64,
            "query_pre_attn_scalar": 16,
            "max_position_embeddings": 1024,
        },
        "d_sae": 1024,
        "n_features": (5, 10, 20, 40),  # a 1024-wide SAE has about 50 features to offer
        "bio": 24,
        "mmlu": (4, 4, 4, 4),
        "prompt_tokens": 160,
        "eval_questions": {"bfloat16": None, "float16": None, "float32": None},
        "batch_size": {"bfloat16": 8, "float16": 8, "float32": 8},
        "reference_sample": 4,
        "overhead_tokens": 128,
        "repetitions": 7,
        "new_tokens": 8,
    },
}


# --------------------------------------------------------------------------- results


class Results:
    """``results.json``, rewritten atomically after every measurement."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "steps": {}}
        self.save()

    def put(self, step: str, value: Any) -> None:
        self.data["steps"][step] = value
        self.save()
        print(f"[{step}] {json.dumps(value)}", flush=True)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        tmp.replace(self.path)


# --------------------------------------------------------------------------- fixtures


def words(rng: random.Random, n_chars: int) -> str:
    """Lower-case pseudo-words, ``n_chars`` long: one token per character with the tokenizer."""
    out: list[str] = []
    size = 0
    while size < n_chars:
        word = "".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(2, 9)))
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n_chars]


def write_model(directory: Path, shape: dict[str, Any], device: str) -> dict[str, Any]:
    """A random-weight Gemma-2 of ``shape`` with a Gemma-like character-level tokenizer."""
    import torch
    from tiny_gemma import tiny_vocab, write_tokenizer
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = dict(shape["model"])
    cfg["vocab_size"] = cfg["vocab_size"] or len(tiny_vocab()[0])
    config = Gemma2Config(**cfg, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Gemma2ForCausalLM(config).to(dtype)
    model.save_pretrained(directory)
    write_tokenizer(directory)
    del model
    return cfg


def write_sae(directory: Path, d_in: int, d_sae: int, hook_layer: int) -> None:
    """A random JumpReLU SAE whose features fire on about half of the tokens of any prompt."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(model_name="bench", hook_name=f"blocks.{hook_layer}.hook_resid_post")
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(1e-6)
    sae.save_model(directory)


def mcq_rows(rng: random.Random, n: int, question_chars: int) -> list[dict[str, Any]]:
    return [
        {
            "question": words(rng, question_chars) + "?",
            "choices": [words(rng, 24) for _ in range(4)],
            "answer": i % 4,
        }
        for i in range(n)
    ]


def write_data(root: Path, shape: dict[str, Any], scale: dict[str, int | None]) -> dict[str, Any]:
    """The bio case's mirror (WMDP-bio, MMLU, WikiText) and a forget corpus file.

    ``scale`` maps a name to how many questions of each set to write (None: the real sizes).
    """
    from mirrors import write_hub_dataset

    rng = random.Random(0)
    question_chars = shape["prompt_tokens"] - 260  # chat template, instruction and choices
    sets: dict[str, Any] = {}
    for name, limit in scale.items():
        folder = root / name
        fraction = 1.0 if limit is None else min(1.0, limit / (shape["bio"] + sum(shape["mmlu"])))
        wmdp = max(1, round(shape["bio"] * fraction))
        mmlu = [max(1, round(n * fraction)) for n in shape["mmlu"]]
        write_hub_dataset(
            folder, "cais/wmdp", {("wmdp-bio", "test"): mcq_rows(rng, wmdp, question_chars)}
        )
        write_hub_dataset(
            folder,
            "cais/mmlu",
            {
                (subject, "test"): mcq_rows(rng, n, question_chars)
                for subject, n in zip(MMLU_SUBJECTS, mmlu, strict=True)
            },
        )
        docs = [{"text": words(rng, 1500)} for _ in range(48)]
        write_hub_dataset(folder, "Salesforce/wikitext", {("wikitext-2-raw-v1", "test"): docs})
        sets[name] = {"questions": wmdp + sum(mmlu), "wmdp_bio": wmdp, "mmlu": mmlu}
    forget = root / "bio-forget-corpus.jsonl"
    rows = [
        {"title": "t", "abstract": "a", "doi": "d", "text": words(rng, 1500)} for _ in range(48)
    ]
    forget.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return sets


# --------------------------------------------------------------------------- (a) evaluate


def dsg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsg.cli.app", *args]


def has_backend_option() -> bool:
    shown = subprocess.run(
        dsg_command("evaluate", "--help"), capture_output=True, text=True, env=child_env()
    )
    return "--backend" in shown.stdout


def child_env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if not CUDA_CHILDREN:
        env["OMP_NUM_THREADS"] = "1"  # CPU figures: one thread, steadier on a shared machine
    return env


def time_evaluate(
    paths: dict[str, Path], args: argparse.Namespace, backend: str | None, dtype: str, data: str
) -> dict[str, Any]:
    """One ``dsg evaluate`` in its own process; the report's stage times."""
    shape = SHAPES[args.shape]
    run = paths["runs"] / f"{backend or 'default'}-{dtype}"
    command = dsg_command(
        "evaluate",
        "--case",
        "bio",
        "--questions",
        "all",
        "--model",
        str(paths["model"]),
        "--sae",
        str(paths["sae"]),
        "--data-dir",
        str(paths["data"] / data),
        "--forget-corpus",
        str(paths["data"] / "bio-forget-corpus.jsonl"),
        "--config",
        str(paths["config"]),
        "--device",
        args.device,
        "--dtype",
        dtype,
        "--batch-size",
        str(shape["batch_size"][dtype]),
        "--out",
        str(run),
    )
    if backend is not None:
        command += ["--backend", backend]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=child_env(), timeout=args.eval_timeout
        )
    except subprocess.TimeoutExpired:
        return {"finished": False, "timeout_s": args.eval_timeout}
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"finished": False, "error": done.stderr.strip().splitlines()[-1:]}
    reports = sorted(run.rglob("report.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(reports[-1].read_text()) if reports else {}
    timings = report.get("timings", {})
    return {"finished": True, "wall_s": wall, "timings": timings}


def scaled(measured: dict[str, Any], questions: int, full: int) -> dict[str, float | None]:
    """The whole bio-sized run from one on ``questions`` questions: the per-question stages
    (baseline and sweep: ``engine_s``) scale with the number of questions; the rest (start-up,
    loading, selection, report) does not and is in ``full_run_s`` only."""
    if not measured.get("finished"):
        return {"engine_s": None, "full_run_s": None}
    t = measured["timings"]
    per_question = t.get("baseline", 0.0) + t.get("sweep", 0.0)
    engine = per_question * full / questions
    return {"engine_s": engine, "full_run_s": measured["wall_s"] - per_question + engine}


# --------------------------------------------------------------------------- (b), (c) in-process


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repetitions: int) -> list[float]:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def with_and_without(
    fn: Callable[[], Any], model: Any, bundle: Any, device: str, repetitions: int
) -> tuple[float, float]:
    """Medians of ``fn`` without and with the guardrail attached, call by call in alternation
    (plain, guarded, plain, ...), so that drift and other jobs' bursts fall on both alike;
    attaching and removing the guardrail are outside the timed calls."""
    from dsg.hf import attach

    plain: list[float] = []
    guarded: list[float] = []
    fn()  # warm-up, plain and guarded
    with attach(model, bundle):
        fn()
    for _ in range(repetitions):
        plain.append(timed_once(fn, device))
        with attach(model, bundle):
            guarded.append(timed_once(fn, device))
    return statistics.median(plain), statistics.median(guarded)


def timed_once(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def load_hf(paths: dict[str, Path], dtype: str, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=getattr(torch, dtype))
    return model.to(device).eval()


def make_bundle(
    paths: dict[str, Path],
    k: int,
    strategy: str = "dynamic",
    bind_on: str | None = None,
    *,
    quiet: bool = False,
) -> Any:
    """A k-feature bundle with threshold 0: every row with a hit fires (worst case). ``windowed``
    adds a 32-token densest-window gate at threshold 0, so its window sums run on every pass.
    ``quiet``: thresholds 1 instead, so no row fires (a benign prompt). ``bind_on``: the device
    on which the model in ``paths["model"]`` records the bundle's binding (None: an unbound
    bundle, which only a caller that overrides the check can use)."""
    import torch
    from dsg_sae_lens.local_dir import load_sae_dir

    from dsg.bundle import from_sae
    from dsg_runtime.binding import record_binding

    loaded = load_sae_dir(str(paths["sae"]), device="cpu", dtype=torch.float32)
    threshold = 1.0 if quiet else 0.0
    params = {"window": 32, "window_threshold": threshold} if strategy == "windowed" else None
    binding = None
    if bind_on is not None:
        binding = record_binding(load_hf(paths, "float32", bind_on), loaded.hook_name)
    return from_sae(
        loaded,
        torch.arange(k),
        threshold=threshold,
        multiplier=500.0,
        strategy=strategy,
        params=params,
        binding=binding,
    )


def reference_schedule(
    paths: dict[str, Path], args: argparse.Namespace, dtype: str, bundle: Any
) -> dict[str, Any]:
    """Batch 1, logits at every position, every prompt re-run per configuration: the time per
    prompt-pass without and with the guardrail, and the whole run extrapolated."""
    import torch

    from dsg.hf import attach

    shape = SHAPES[args.shape]
    model = load_hf(paths, dtype, args.device)
    gen = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(3, 100, (1, shape["prompt_tokens"]), generator=gen).to(args.device)
        for _ in range(shape["reference_sample"])
    ]
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.inference_mode():
        for guard in (False, True):
            handle = attach(model, bundle) if guard else None
            for ids in [prompts[0], *prompts]:  # the first is a warm-up
                sync(args.device)
                start = time.perf_counter()
                model(input_ids=ids).logits.float().cpu()  # every position, to the host
                sync(args.device)
                times[guard].append(time.perf_counter() - start)
            times[guard].pop(0)
            if handle is not None:
                handle.remove()
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    plain, hooked = statistics.median(times[False]), statistics.median(times[True])
    full = SHAPES[args.shape]["bio"] + sum(SHAPES[args.shape]["mmlu"])
    return {
        "dtype": dtype,
        "sample_prompts": len(prompts),
        "prompt_tokens": shape["prompt_tokens"],
        "pass_s": plain,
        "guarded_pass_s": hooked,
        "full_run_s": full * (plain + N_CONFIGS * hooked),
    }


def batched_pass(paths: dict[str, Path], args: argparse.Namespace, dtype: str) -> float:
    """One plain batched forward per prompt (batch 16, prompt length), in seconds per prompt."""
    import torch

    shape = SHAPES[args.shape]
    model = load_hf(paths, dtype, args.device)
    ids = torch.randint(3, 100, (16, shape["prompt_tokens"])).to(args.device)
    with torch.inference_mode():
        t = statistics.median(timed(lambda: model(input_ids=ids), args.device, 5))
    return t / 16


def guardrail_overhead(
    paths: dict[str, Path], args: argparse.Namespace, dtype: str, bundles: dict[str, Any]
) -> dict[str, Any]:
    """Forward and generation time with and without ``dsg.hf.attach``, at batch 1 and 16:
    ``bundles["firing"]`` fires on every row, ``bundles["quiet"]`` on none."""
    import torch

    shape = SHAPES[args.shape]
    model = load_hf(paths, dtype, args.device)
    reps = args.repetitions or shape["repetitions"]
    bundle = bundles["firing"]
    out: dict[str, Any] = {"dtype": dtype, "k": bundle.k, "repetitions": reps}
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for batch in (1, 16):
            ids = torch.randint(3, 100, (batch, shape["overhead_tokens"]), generator=gen)
            ids = ids.to(args.device)
            plain, guarded = with_and_without(
                lambda ids=ids: model(input_ids=ids, logits_to_keep=1),
                model,
                bundle,
                args.device,
                reps,
            )
            out[f"forward_b{batch}"] = {
                "tokens": shape["overhead_tokens"],
                "plain_s": plain,
                "guarded_s": guarded,
                "overhead": guarded / plain - 1,
            }
            prompt = ids[:, :16]
            new = args.new_tokens or shape["new_tokens"]
            settings = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False}
            for name, which in (("generate", "firing"), ("generate_quiet", "quiet")):
                plain, guarded = with_and_without(
                    lambda prompt=prompt, settings=settings: model.generate(
                        input_ids=prompt, attention_mask=torch.ones_like(prompt), **settings
                    ),
                    model,
                    bundles[which],
                    args.device,
                    max(3, reps // 3),
                )
                out[f"{name}_b{batch}"] = {
                    "new_tokens": new,
                    "plain_per_token_s": plain / new,
                    "guarded_per_token_s": guarded / new,
                    "overhead": guarded / plain - 1,
                }
    return out


# --------------------------------------------------------------------------- main


def ratio_lines(data: dict[str, Any]) -> list[str]:
    """The figures against the issue's targets."""
    steps = data["steps"]
    lines = []
    dtype = data["eval_dtype"]
    for name, run in steps.get("evaluate", {}).items():
        full, engine = run.get("full_run_s"), run.get("engine_s")
        if full is None or engine is None:
            lines.append(f"evaluate {name}: did not finish ({run.get('measured')})")
            continue
        lines.append(
            f"evaluate {name}: {full:.1f} s for the bio-sized run, {engine:.1f} s of it "
            "baseline and sweep"
        )
        ref = steps.get(f"reference_{run['dtype']}")
        if ref:
            speedup = ref["full_run_s"] / engine
            lines.append(
                f"  vs the reference schedule at {run['dtype']}: {speedup:.1f}x faster "
                f"(target >= 20x: {'met' if speedup >= 20 else 'not met'})"
            )
        batched = steps.get(f"batched_pass_{run['dtype']}")
        if batched and run["dtype"] == dtype:
            passes = data["questions"] * (1 + N_CONFIGS)
            within = engine / (passes * batched["per_prompt_s"])
            lines.append(
                f"  vs one batched forward per prompt-pass ({passes} passes): {within:.2f}x "
                f"(target <= 3x: {'met' if within <= 3 else 'not met'})"
            )
    overhead = steps.get("overhead")
    if overhead:
        targets = {"forward_b1": 0.02, "generate_b1": 0.03, "generate_b16": 0.03}
        for key in ("forward_b1", "generate_b1", "forward_b16", "generate_b16"):
            value = overhead[key]["overhead"]
            line = f"guardrail {key}: {100 * value:+.1f}%"
            if key in targets:
                met = "met" if value <= targets[key] else "not met"
                line += f" (target <= {100 * targets[key]:.0f}%: {met})"
            lines.append(line)
        for key in ("generate_quiet_b1", "generate_quiet_b16"):
            if key in overhead:  # results of runs before the quiet case was measured
                lines.append(f"guardrail {key}: {100 * overhead[key]['overhead']:+.1f}%")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma-2-2b")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--dtypes", default=None, help="evaluate dtypes, comma-separated (bfloat16,float32)"
    )
    parser.add_argument("--eval-timeout", type=float, default=120.0, help="seconds per evaluate")
    parser.add_argument(
        "--skip", default="", help="steps to skip, comma-separated: evaluate,reference,overhead"
    )
    parser.add_argument(
        "--strategy", choices=("dynamic", "windowed"), default="dynamic", help="the bundle's gate"
    )
    parser.add_argument(
        "--repetitions", type=int, default=None, help="overhead: timed calls (default: the shape's)"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="overhead: tokens generated per call"
    )
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(ROOT / "tests"))  # the tokenizer and mirror writers of the tests
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = args.device.startswith("cuda")
    global CUDA_CHILDREN
    CUDA_CHILDREN = on_gpu
    if not on_gpu:
        torch.set_num_threads(1)
    dtypes = (args.dtypes or ("bfloat16,float32" if on_gpu else "float32,bfloat16")).split(",")
    eval_dtype = dtypes[0]
    skip = set(filter(None, args.skip.split(",")))
    shape = SHAPES[args.shape]
    full_questions = shape["bio"] + sum(shape["mmlu"])
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": out / "model",
        "sae": out / "sae",
        "data": out / "data",
        "runs": out / "runs",
        "config": out / "dsg.toml",
    }
    import transformers

    device_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    results = Results(
        out / "results.json",
        {
            "shape": args.shape,
            "device": device_name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "questions": full_questions,
            "eval_dtype": eval_dtype,
            "configurations": N_CONFIGS,
        },
    )

    start = time.perf_counter()
    cfg = write_model(paths["model"], shape, args.device)
    write_sae(paths["sae"], cfg["hidden_size"], shape["d_sae"], HOOK_LAYER[args.shape])
    scales = {dtype: shape["eval_questions"][dtype] for dtype in dtypes}
    sets = write_data(paths["data"], shape, scales)
    n_features = ", ".join(str(n) for n in shape["n_features"])
    paths["config"].write_text(
        f"seq_len = 128\ndataset_size = 32\nn_features = [{n_features}]\n", encoding="utf-8"
    )
    results.put("fixtures", {"seconds": time.perf_counter() - start, "sets": sets})
    bundle = make_bundle(paths, 20, args.strategy, bind_on=args.device)

    if "overhead" not in skip:
        overhead_dtype = "bfloat16" if on_gpu else "float32"
        quiet = make_bundle(paths, 20, args.strategy, bind_on=args.device, quiet=True)
        bundles = {"firing": bundle, "quiet": quiet}
        results.put("overhead", guardrail_overhead(paths, args, overhead_dtype, bundles))

    if "reference" not in skip:
        for dtype in dict.fromkeys(["float32", eval_dtype]):
            results.put(f"reference_{dtype}", reference_schedule(paths, args, dtype, bundle))
            results.put(f"batched_pass_{dtype}", {"per_prompt_s": batched_pass(paths, args, dtype)})

    if "evaluate" not in skip:
        backends: list[str | None] = ["transformer_lens", "transformers"]
        backend_note = "both backends"
        if not has_backend_option():
            backends, backend_note = [None], "no --backend option: the default engine only"
        runs: dict[str, Any] = {}
        for backend in backends:
            for dtype in dtypes:
                measured = time_evaluate(paths, args, backend, dtype, dtype)
                questions = sets[dtype]["questions"]
                runs[f"{backend or 'default'}-{dtype}"] = {
                    "dtype": dtype,
                    "questions_run": questions,
                    "measured": measured,
                    **scaled(measured, questions, full_questions),
                }
                results.put("evaluate", runs)
        results.data["backends"] = backend_note
        results.save()

    results.put("total_s", time.perf_counter() - start)
    print("\n".join(ratio_lines(results.data)))


if __name__ == "__main__":
    main()
