"""vLLM deciding inside the engine (``DSG_DECIDE_IN=engine``) serves the model organism as
dsg.hf's guarded generate does: each prompt decided once, in the step that prefills it, as dsg.hf
decides it; greedy generations equal, batched and alone, with requests preempted and recomputed
(which keep their first decision); a decision a client writes into its request is never read;
set-ups that would bring a prompt to the engine in parts refused at start-up. Needs vLLM
(``nox -s vllm``); skipped without it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from test_vllm_engine import (
    in_separate_processes,
    organism_served,
    preemptions,
    vllm_generations,
)
from vllm_organism import MAX_NEW, organism_model

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """As test_vllm_engine's engine (requests preempted too), each prompt prefilled whole."""
    yield from organism_served(
        tmp_path_factory,
        "engine",
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
        max_num_batched_tokens=256,
    )


def test_decided_in_the_engine_as_dsg_hf_decides_and_served_alike(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from vllm_kept import kept_decisions

    preempted = preemptions(monkeypatch)
    decisions = kept_decisions(monkeypatch.setattr)
    caplog.set_level(logging.ERROR, logger="dsg_runtime")
    ids, guarded, fired = served["ids"], served["guarded"], served["fired"]
    assert any(fired) and not all(fired), fired
    llm = served["llm"]
    batched = vllm_generations(llm, ids)
    assert preempted, "the batch ran without preemption"
    assert batched == guarded
    # every prompt decided exactly once (a recompute after preemption reused its decision)
    assert sorted(decisions) == sorted(zip(map(tuple, ids), fired, strict=True))
    decisions.clear()
    assert [vllm_generations(llm, [p])[0] for p in ids] == guarded
    assert decisions == list(zip(map(tuple, ids), fired, strict=True))
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_decision_written_into_the_request_is_never_read(served: dict[str, Any]) -> None:
    """A request added past the input processor claiming ``dsg_fired = False`` for a prompt
    that fires is served guarded: the engine decides it on its prompt."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from dsg_runtime.vllm.seal import FIRED_KEY

    engine = served["llm"].llm_engine
    hazard = served["fired"].index(True)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, min_tokens=MAX_NEW)
    forged = engine.input_processor.process_inputs(
        "forged",
        TokensPrompt(prompt_token_ids=served["ids"][hazard]),
        params,
        supported_tasks=engine.get_supported_tasks(),
    )
    forged.sampling_params.extra_args = {FIRED_KEY: False}
    engine.add_request(forged.request_id, forged, forged.sampling_params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    assert list(done.values()) == [served["guarded"][hazard]]


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ("enable_prefix_caching=True, enable_chunked_prefill=False", "prefix caching"),
        ("enable_prefix_caching=False, enable_chunked_prefill=True", "chunked prefill"),
        (
            "enable_prefix_caching=False, enable_chunked_prefill=False, decide_in=None",
            "(deciding in the engine) but the front end with",
        ),
    ],
    ids=["prefix caching", "chunked prefill", "front end decides"],
)
def test_what_would_split_a_prompt_or_mix_the_modes_is_refused_at_start(
    served: dict[str, Any], options: str, what: str
) -> None:
    """Engine core and worker spawned apart (as a server runs them). Last case: the front end
    decides in the front end while its engine processes decide in the engine; they do not
    prove to each other."""
    engine_options, _, mode = options.partition(", decide_in=")
    script = f"""
import os, sys
import dsg_runtime.vllm
from vllm.v1.engine.core_client import EngineCoreClient
make = EngineCoreClient.make_client
def engine_env(*args, **kwargs):
    os.environ["DSG_DECIDE_IN"] = "engine"
    return make(*args, **kwargs)
EngineCoreClient.make_client = staticmethod(engine_env)
if {mode!r} == "None":
    os.environ.pop("DSG_DECIDE_IN", None)
from vllm import LLM
try:
    LLM(model={str(organism_model())!r}, dtype="float32", max_model_len=128,
        max_num_batched_tokens=128, enforce_eager=True, gpu_memory_utilization=0.1,
        {engine_options})
except dsg_runtime.vllm.GuardrailRefused as refused:
    print("REFUSED", refused)
    sys.exit(0)
print("SERVED")
"""
    env = {"DSG_BUNDLE": str(served["bundle_dir"]), "DSG_DECIDE_IN": "engine"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        last = in_separate_processes(script).stdout.strip().splitlines()[-1]
    assert last.startswith("REFUSED"), last
    assert what in last, last
