"""vLLM with the guardrail plugin serves the model organism exactly as dsg.hf's guarded generate
does: greedy generations equal for prompts that fire and prompts that do not, alone and in one
batch, with prefix caching, chunked prefill and preemption. Needs vLLM (``nox -s vllm``); skipped
without it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_organism import (
    MAX_NEW,
    hf_generations,
    organism_bundle,
    organism_model,
    prompt_ids,
)

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from organism_served(tmp_path_factory)


def organism_served(
    factory: pytest.TempPathFactory, decide_in: str = "front-end", **options: Any
) -> Iterator[dict[str, Any]]:
    """The organism served in this process (whose plugin patches it), deciding where
    ``decide_in`` says, with :func:`served_engine`'s ``options``."""
    ids = prompt_ids()
    bundle_dir = organism_bundle(factory.mktemp("organism") / "bundle", ids[-2:])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env.setenv("DSG_BUNDLE", str(bundle_dir))
        env.setenv("DSG_DECIDE_IN", decide_in)
        env.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        yield served_engine(bundle_dir, ids, **options)


def served_engine(bundle_dir: Path, ids: list[list[int]], **options: Any) -> dict[str, Any]:
    """The organism served by vLLM with the plugin, and dsg.hf's guarded answers; ``options``
    replace the engine's scheduling options."""
    from vllm import LLM

    import dsg_runtime.vllm

    dsg_runtime.vllm.register()
    scheduling = {
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 64,  # long prompts are prefilled in chunks
        **options,
    }
    llm = LLM(
        model=str(organism_model()),
        dtype="float32",
        max_model_len=256,
        max_num_seqs=16,
        block_size=16,
        num_gpu_blocks_override=24,  # too few for the whole batch: requests are preempted
        seed=0,
        gpu_memory_utilization=0.1,  # on CPU: the share of host memory vLLM may claim
        **scheduling,
    )
    guarded, fired = hf_generations(bundle_dir, ids, guarded=True)
    return {"llm": llm, "bundle_dir": bundle_dir, "ids": ids, "guarded": guarded, "fired": fired}


def vllm_generations(llm: Any, ids: list[list[int]]) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, min_tokens=MAX_NEW)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def preemptions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the requests vLLM's scheduler preempts from now on, as it preempts them."""
    from vllm.v1.core.sched.scheduler import Scheduler

    preempted: list[str] = []
    preempt = Scheduler._preempt_request

    def counted(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        preempted.append(request.request_id)
        return preempt(self, request, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "_preempt_request", counted)
    return preempted


def test_served_generations_equal_dsg_hf_guarded(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    preempted = preemptions(monkeypatch)
    ids, guarded, fired = served["ids"], served["guarded"], served["fired"]
    plain, _ = hf_generations(served["bundle_dir"], ids, guarded=False)
    assert any(fired) and not all(fired), fired  # both kinds of prompt
    assert fired[-2] != fired[-1], "the prefix-sharing pair must differ in decision"
    assert any(g != p for g, p, f in zip(guarded, plain, fired, strict=True) if f), (
        "the clamp changed nothing"
    )
    llm = served["llm"]
    batched = vllm_generations(llm, ids)  # both kinds in one batch
    assert preempted, "the batch ran without preemption"
    again = vllm_generations(llm, ids)  # every prompt's prefix is now cached
    alone = [vllm_generations(llm, [p])[0] for p in ids]
    reverse = vllm_generations(llm, ids[::-1])[::-1]  # the other of each pair cached first
    for name, got in (
        ("batched", batched),
        ("cached", again),
        ("alone", alone),
        ("reverse", reverse),
    ):
        assert got == guarded, name


def test_the_offline_engine_decides_one_calls_prompts_together(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LLM.generate`` decides the prompts of one call in one batch, on the caller's thread,
    before adding them (no decision again in ``process_inputs``), and serves as dsg.hf does;
    a second call with the same prompts is answered from the remembered decisions."""
    import threading

    from dsg_runtime.vllm.decision import PromptDecider

    calls: list[tuple[str, int]] = []
    decide_many = PromptDecider.decide_many

    def recorded(self: PromptDecider, prompts: list[list[int]]) -> list[bool]:
        calls.append((threading.current_thread().name, len(prompts)))
        return decide_many(self, prompts)

    monkeypatch.setattr(PromptDecider, "decide_many", recorded)
    ids, llm = served["ids"], served["llm"]
    llm.llm_engine.input_processor._dsg_batcher.forget()  # the fixture served these prompts
    assert vllm_generations(llm, [*ids, ids[0]]) == [*served["guarded"], served["guarded"][0]]
    assert calls == [(threading.current_thread().name, len(ids))]
    calls.clear()
    assert vllm_generations(llm, ids) == served["guarded"]
    assert calls == []


def test_without_the_decision_in_the_salt_prefix_caching_would_mix(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pair's shared blocks differ by decision: were the salt blind to it, the second
    prompt would reuse the first's KV and answer otherwise than dsg.hf (so the salt matters)."""
    import dsg_runtime.vllm.engine

    llm, ids, guarded = served["llm"], served["ids"], served["guarded"]
    monkeypatch.setattr(dsg_runtime.vllm.engine, "cache_salt", lambda user, digest, fired: "")
    mixed = []
    for first, second in ((-2, -1), (-1, -2)):
        assert llm.reset_prefix_cache()
        vllm_generations(llm, [ids[first]])
        mixed.append(vllm_generations(llm, [ids[second]])[0] != guarded[second])
    assert any(mixed)


def test_beam_search_is_refused(served: dict[str, Any]) -> None:
    """Beam search resubmits prompt + beam tokens as new requests, each decided again (a prompt
    that fires alone stopped firing after a few beam tokens): refused, not served unguarded."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

    from dsg_runtime.vllm.engine import RequestRefused

    prompt = TokensPrompt(prompt_token_ids=served["ids"][0])
    with pytest.raises(RequestRefused, match="beam search"):
        served["llm"].beam_search([prompt], BeamSearchParams(beam_width=2, max_tokens=4))


def test_weight_updates_are_refused(served: dict[str, Any]) -> None:
    """The front end decides on the weights it loaded: reloading or reconfiguring the served
    weights through the worker is refused, and the engine still serves as dsg.hf does."""
    from dsg_runtime.vllm import GuardrailRefused

    llm = served["llm"]
    updates = [
        ("reload_weights", ()),
        ("update_config", ({"load_config": {"load_format": "dummy"}},)),
        ("reset_weights", ()),
    ]
    for method, args in updates:
        with pytest.raises(GuardrailRefused, match="would change the served weights"):
            llm.collective_rpc(method, args=args)
    ids = served["ids"]
    assert vllm_generations(llm, ids[:2]) == served["guarded"][:2]


def engine_core_request(engine: Any, request_id: str, ids: list[int]) -> Any:
    """A request as the input processor makes it (decided and sealed), not yet in the engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, min_tokens=MAX_NEW)
    request = engine.input_processor.process_inputs(
        request_id,
        TokensPrompt(prompt_token_ids=ids),
        params,
        supported_tasks=engine.get_supported_tasks(),
    )
    engine.input_processor.assign_request_id(request)
    return request


def test_forged_decisions_are_refused_alone(served: dict[str, Any]) -> None:
    """Requests handed to the engine core past the input processor, with a hand-set
    ``dsg_fired = False``, a seal moved from another prompt, or no seal, are refused one by one;
    the genuine requests beside them are served as dsg.hf serves them."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from dsg_runtime.vllm.engine import RequestRefused
    from dsg_runtime.vllm.seal import FIRED_KEY

    engine = served["llm"].llm_engine
    ids, guarded, fired = served["ids"], served["guarded"], served["fired"]
    hazard = fired.index(True)
    calm = fired.index(False)
    flipped = engine_core_request(engine, "flipped", ids[hazard])
    flipped.sampling_params.extra_args[FIRED_KEY] = False
    moved = engine_core_request(engine, "moved", ids[calm])
    moved.prompt_token_ids = ids[hazard]
    bare = engine_core_request(engine, "bare", ids[hazard])
    bare.sampling_params.extra_args = {FIRED_KEY: False}
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, min_tokens=MAX_NEW)
    genuine = {f"good-{i}": i for i in (hazard, calm)}
    for name, i in genuine.items():
        engine.add_request(name, TokensPrompt(prompt_token_ids=ids[i]), params)
    for forged in (flipped, moved, bare):
        with pytest.raises(RequestRefused, match="no decision this server's front end made"):
            engine.engine_core.add_request(forged)
        with pytest.raises(RequestRefused, match="no decision this server's front end made"):
            engine.add_request(forged.request_id, forged, forged.sampling_params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    assert done == {name: guarded[i] for name, i in genuine.items()}


def in_separate_processes(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a separate Python whose vLLM starts its engine core and worker as
    fresh processes (spawned: each loads the plugin from its entry point, as a server does)."""
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    return done


def start_engine_with_other_bundle(bundle: str | None, model: Path) -> str:
    """vLLM with the front end on the test's bundle and the engine processes on ``bundle``
    (None: no DSG_BUNDLE at all); returns the last line the script printed."""
    script = f"""
import os, sys
import dsg_runtime.vllm
from vllm.v1.engine.core_client import EngineCoreClient
make = EngineCoreClient.make_client
def engine_env(*args, **kwargs):
    other = {bundle!r}
    if other is None:
        del os.environ["DSG_BUNDLE"]
    else:
        os.environ["DSG_BUNDLE"] = other
    return make(*args, **kwargs)
EngineCoreClient.make_client = staticmethod(engine_env)
from vllm import LLM
try:
    LLM(model={str(model)!r}, dtype="float32", max_model_len=128, enforce_eager=True,
        gpu_memory_utilization=0.1)
except dsg_runtime.vllm.GuardrailRefused as refused:
    print("REFUSED", refused)
    sys.exit(0)
print("SERVED")
"""
    return in_separate_processes(script).stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("engine_bundle", ["another", None], ids=["another bundle", "none"])
def test_an_engine_on_another_bundle_or_none_refuses_to_start(
    served: dict[str, Any], tmp_path: Path, engine_bundle: str | None
) -> None:
    from dsg.bundle import Bundle

    other = None
    if engine_bundle == "another":
        mine = Bundle.load(served["bundle_dir"])
        other = str(dataclasses.replace(mine, multiplier=5.0).save(tmp_path / "other"))
    last = start_engine_with_other_bundle(other, organism_model())
    want = "guards with bundle" if other else "runs without the guardrail"
    assert last.startswith("REFUSED") and want in last, last


def test_a_forged_request_fails_alone_in_a_separate_engine_core(served: dict[str, Any]) -> None:
    """With the engine core in its own process (as a server runs it), a request added past the
    input processor with ``dsg_fired`` set to False is answered with an error by the engine
    core alone, while the genuine requests sent with it are served as dsg.hf serves them."""
    ids, guarded, fired = served["ids"], served["guarded"], served["fired"]
    hazard = fired.index(True)
    script = f"""
import dataclasses
import json
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
ids = {ids!r}
llm = LLM(model={str(organism_model())!r}, dtype="float32", max_model_len=256,
          enforce_eager=True, gpu_memory_utilization=0.1, seed=0)
engine = llm.llm_engine
params = SamplingParams(temperature=0.0, max_tokens={MAX_NEW}, min_tokens={MAX_NEW})
forged = engine.input_processor.process_inputs(
    "forged", TokensPrompt(prompt_token_ids=ids[{hazard}]), params,
    supported_tasks=engine.get_supported_tasks())
engine.input_processor.assign_request_id(forged)
forged.sampling_params.extra_args["dsg_fired"] = False
for i, prompt in enumerate(ids):
    engine.add_request(f"good-{{i}}", TokensPrompt(prompt_token_ids=prompt), params)
    if i == 1:
        engine.engine_core.add_request(forged)  # past the input processor and its checks
done = {{}}
while engine.has_unfinished_requests():
    for out in engine.step():
        if out.finished:
            done[out.request_id] = list(out.outputs[0].token_ids)
print("RESULT", json.dumps(done), flush=True)
"""
    ran = in_separate_processes(script)
    results = [line for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, (ran.stdout[-2000:], ran.stderr[-3000:])
    done = json.loads(results[-1].removeprefix("RESULT "))
    assert done == {f"good-{i}": want for i, want in enumerate(guarded)}
    assert "carries no decision this server's front end made" in ran.stdout + ran.stderr


def test_the_async_front_end_decides_off_its_event_loop_in_batches(
    served: dict[str, Any],
) -> None:
    """``AsyncLLM`` (the server's engine client), with rendered prompts (as the server hands
    them over) sent at once: every decision is taken on the decider's thread, never on the
    event loop's, once per prompt (the start-up request's prompt is remembered), prompts queued
    together are decided in one call, and every answer equals dsg.hf's guarded one."""
    ids, guarded = served["ids"], served["guarded"]
    script = f"""
import asyncio
import json
import threading
from dsg_runtime.vllm.decision import PromptDecider
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs.engine import tokens_input
from vllm.v1.engine.async_llm import AsyncLLM
calls = []
decide_many = PromptDecider.decide_many
def recorded(self, prompts):
    calls.append([threading.current_thread().name, len(prompts)])
    return decide_many(self, prompts)
PromptDecider.decide_many = recorded
ids = {ids!r}
async def main():
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model={str(organism_model())!r}, dtype="float32", max_model_len=256,
        enforce_eager=True, gpu_memory_utilization=0.1, seed=0))
    params = SamplingParams(temperature=0.0, max_tokens={MAX_NEW}, min_tokens={MAX_NEW})
    async def one(i, prompt):
        async for out in llm.generate(tokens_input(prompt), params, f"r{{i}}"):
            last = out
        return list(last.outputs[0].token_ids)
    try:
        await one(-1, ids[0])  # the engine's start-up proof, the first decision
        calls.clear()
        done = await asyncio.gather(*(one(i, p) for i, p in enumerate(ids)))
    finally:
        llm.shutdown()
    print("RESULT", json.dumps({{"done": done, "calls": calls}}), flush=True)
asyncio.run(main())
"""
    ran = in_separate_processes(script)
    results = [line for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, (ran.stdout[-2000:], ran.stderr[-3000:])
    got = json.loads(results[-1].removeprefix("RESULT "))
    assert got["done"] == guarded
    assert {name for name, _ in got["calls"]} == {"dsg-decider"}, got["calls"]
    assert sum(n for _, n in got["calls"]) == len(ids) - 1  # ids[0] decided at start-up
    assert max(n for _, n in got["calls"]) > 1, got["calls"]
