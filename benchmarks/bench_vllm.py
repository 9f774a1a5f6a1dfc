"""The vLLM guardrail's cost: throughput with and without the plugin, and its decisions vs dsg.hf.

It builds, under ``--out``, the random-weight model and random JumpReLU SAE of
``bench_gpu.py``'s shape (gemma-2-2b by default; no download), a dynamic bundle of ``--features``
features whose threshold lies at the median prompt rate (so about half the prompts fire), and
random prompts of ``--prompt-tokens`` tokens. Then, each in a fresh process (the plugin patches
the process it is registered in):

(a) ``plain`` and ``guarded`` engines: greedy generation of ``--new-tokens`` tokens for 1, 16 and
    64 concurrent requests (``--concurrency``), each level timed over ``--rounds`` batches after
    one warm-up batch; throughput in generated tokens per second and the guarded/plain ratio;
(b) decisions: the plugin's decision for every prompt against ``dsg.hf``'s (the bundle attached
    to the transformers model, greedy ``generate``), and how many served generations equal
    dsg.hf's guarded ones (bit-equal kernels are not expected on a GPU, so this is reported,
    not asserted).

Every figure lands in ``--out/results.json`` as soon as it is measured.

    python benchmarks/bench_vllm.py --device cuda --out /tmp/dsg-bench-vllm
    python benchmarks/bench_vllm.py --smoke --out /tmp/dsg-bench-vllm-smoke   # CPU, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]


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


def prompts(vocab: int, n: int, length: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [[2, *torch.randint(3, vocab, (length - 1,), generator=g).tolist()] for _ in range(n)]


def median_bundle(out: Path, k: int, ids: list[list[int]], dtype: str, device: str) -> Path:
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
        loaded, torch.arange(k), threshold=threshold, multiplier=probe.multiplier, binding=binding
    )
    return bundle.save(out / "bundle")


# --------------------------------------------------------------------------- child processes


def engine(args: argparse.Namespace, guarded: bool) -> Any:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the plugin is registered in-process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    if guarded:
        import dsg_runtime.vllm

        os.environ["DSG_BUNDLE"] = str(args.out / "bundle")
        dsg_runtime.vllm.register()
    from vllm import LLM

    on_cpu = args.device == "cpu"
    return LLM(
        model=str(args.out / "model"),
        dtype=args.dtype,
        max_num_seqs=max(args.concurrency),
        max_model_len=args.prompt_tokens + args.new_tokens + 16,
        enable_prefix_caching=True,
        gpu_memory_utilization=0.2 if on_cpu else 0.85,
        seed=0,
    )


def generate(llm: Any, ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def timed_decisions() -> list[float]:
    """Seconds spent in the front end's decisions, appended as they happen."""
    from dsg_runtime.vllm.decision import PromptDecider

    spent: list[float] = []
    decide = PromptDecider.decide

    def timed(self: PromptDecider, token_ids: list[int]) -> bool:
        start = time.perf_counter()
        try:
            return decide(self, token_ids)
        finally:
            spent.append(time.perf_counter() - start)

    PromptDecider.decide = timed  # type: ignore[method-assign]
    return spent


def child(args: argparse.Namespace) -> None:
    guarded = args.child == "guarded"
    ids = json.loads((args.out / "prompts.json").read_text())
    spent = timed_decisions()
    llm = engine(args, guarded)
    result: dict[str, Any] = {"throughput": {}, "decision_share": {}}
    for c in args.concurrency:
        batch = [ids[i % len(ids)] for i in range(c)]
        generate(llm, batch, args.new_tokens)  # warm-up (and prefix cache filled: decode cost)
        spent.clear()
        start = time.perf_counter()
        for _ in range(args.rounds):
            generate(llm, batch, args.new_tokens)
        seconds = time.perf_counter() - start
        result["throughput"][str(c)] = c * args.new_tokens * args.rounds / seconds
        result["decision_share"][str(c)] = sum(spent) / seconds
    if guarded:
        result["generations"] = generate(llm, ids, args.new_tokens)
    (args.out / f"{args.child}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- dsg.hf side


def hf_side(args: argparse.Namespace, ids: list[list[int]]) -> dict[str, Any]:
    """dsg.hf's decision and guarded greedy generation per prompt, and the plugin's decisions."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsg.bundle import Bundle
    from dsg.hf import attach
    from dsg_runtime.vllm.decision import PromptDecider

    dtype = getattr(torch, args.dtype)
    bundle = Bundle.load(args.out / "bundle")
    model: Any = AutoModelForCausalLM.from_pretrained(args.out / "model", dtype=dtype)
    model = model.to(args.device).eval()
    decider = PromptDecider.load(bundle, args.out / "model", dtype, args.device)
    fired, plugin, generations = [], [], []
    with attach(model, bundle) as handle:
        for p in ids:
            x = torch.tensor([p], device=args.device)
            seq = model.generate(
                x, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
            )
            generations.append(seq[0, x.shape[1] :].tolist())
            fired.append(bool(handle.fired[0]))
            plugin.append(decider.decide(p))
    return {"fired": fired, "plugin": plugin, "generations": generations}


def run_child(args: argparse.Namespace, which: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", which, *args.passthrough]
    subprocess.run(command, check=True, timeout=args.child_timeout)
    return json.loads((args.out / f"{which}.json").read_text())  # type: ignore[no-any-return]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", default="gemma-2-2b", help="a bench_gpu.py shape")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64, help="prompts for the decision check")
    parser.add_argument("--child-timeout", type=float, default=1800.0)
    parser.add_argument("--smoke", action="store_true", help="tiny shape on the CPU, small sizes")
    parser.add_argument("--child", choices=["plain", "guarded"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.passthrough = [a for a in sys.argv[1:]]
    if args.smoke:
        args.shape, args.device, args.features = "tiny", "cpu", 10
        args.prompt_tokens, args.new_tokens, args.prompts = 64, 16, 16
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
    results: dict[str, Any] = {"shape": args.shape, "device": args.device, "dtype": args.dtype}

    def put(key: str, value: Any) -> None:
        results[key] = value
        tmp = args.out / "results.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out / "results.json")
        print(f"[{key}] {json.dumps(value)}", flush=True)

    fixtures = write_fixtures(args.out, args.shape, args.device, args.features)
    ids = prompts(fixtures["vocab"], args.prompts, args.prompt_tokens)
    (args.out / "prompts.json").write_text(json.dumps(ids))
    median_bundle(args.out, args.features, ids, args.dtype, args.device)
    hf = hf_side(args, ids)
    put("decisions", {
        "prompts": len(ids), "fired": sum(hf["fired"]),
        "equal_to_dsg_hf": sum(a == b for a, b in zip(hf["plugin"], hf["fired"], strict=True)),
    })  # fmt: skip
    plain, guarded = run_child(args, "plain"), run_child(args, "guarded")
    put("throughput_tokens_per_s", {"plain": plain["throughput"], "guarded": guarded["throughput"]})
    put("front_end_decision_share_of_guarded_time", guarded["decision_share"])
    put("guarded_over_plain", {
        c: guarded["throughput"][c] / plain["throughput"][c] for c in plain["throughput"]
    })  # fmt: skip
    same = sum(a == b for a, b in zip(guarded["generations"], hf["generations"], strict=True))
    put("generations_equal_to_dsg_hf", {"equal": same, "of": len(ids)})


if __name__ == "__main__":
    main()
