"""The OpenAI-compatible server with the plugin found through its ``vllm.general_plugins`` entry
point, in vLLM's three processes (API server, engine core, worker): the organism's completions
equal dsg.hf's guarded generations, a client cannot switch the guardrail off through
``vllm_xargs``, and beam search is refused as a client error; deciding in the front end and in
the engine (``DSG_DECIDE_IN=engine``). Needs vLLM (``nox -s vllm``);
skipped without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from vllm_organism import (  # noqa: E402
    MAX_NEW,
    hf_generations,
    organism_bundle,
    organism_model,
    prompt_ids,
)

ENTRY_POINT = "dsg_runtime.vllm:register"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["front-end", "engine"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("server")
    ids = prompt_ids()
    bundle_dir = organism_bundle(root / "bundle", ids[-2:])
    port = free_port()
    declared = [ep.value for ep in entry_points(group="vllm.general_plugins")]
    assert ENTRY_POINT in declared, "dsg-runtime is installed without its vLLM entry point"
    env = {
        **os.environ,
        "DSG_BUNDLE": str(bundle_dir),
        "DSG_DECIDE_IN": request.param,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(organism_model()), "--dtype", "float32", "--max-model-len", "256",
        "--gpu-memory-utilization", "0.1", "--port", str(port),
        *(
            ["--no-enable-prefix-caching", "--no-enable-chunked-prefill"]
            if request.param == "engine"
            else ["--enable-prefix-caching"]
        ),
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(port, process, root / "server.log")
        yield {"port": port, "ids": ids, "bundle_dir": bundle_dir}
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def wait_until_up(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            return
        except OSError:
            time.sleep(2)
    pytest.fail("the server did not come up in 10 minutes")


def complete(port: int, ids: list[int], xargs: dict[str, Any] | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {
        "model": str(organism_model()), "prompt": ids, "max_tokens": MAX_NEW,
        "min_tokens": MAX_NEW, "temperature": 0.0, "return_token_ids": True, **extra,
    }  # fmt: skip
    if xargs is not None:
        body["vllm_xargs"] = xargs
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return list(json.load(response)["choices"][0]["token_ids"])


def test_the_server_answers_as_dsg_hf_and_ignores_client_decisions(
    server: dict[str, Any],
) -> None:
    ids = server["ids"]
    guarded, fired = hf_generations(server["bundle_dir"], ids, guarded=True)
    plain, _ = hf_generations(server["bundle_dir"], ids, guarded=False)
    assert any(g != p for g, p, f in zip(guarded, plain, fired, strict=True) if f)
    for prompt, want, f in zip(ids, guarded, fired, strict=True):
        assert complete(server["port"], prompt) == want
        assert complete(server["port"], prompt, {"dsg_fired": not f}) == want


def test_the_server_refuses_beam_search_as_a_client_error(server: dict[str, Any]) -> None:
    ids = server["ids"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        complete(server["port"], ids[0], use_beam_search=True, n=2)
    assert refused.value.code == 400
    body = refused.value.read().decode()
    assert "dsg guardrail" in body and "beam search" in body, body
    guarded, _ = hf_generations(server["bundle_dir"], ids[:1], guarded=True)
    assert complete(server["port"], ids[0]) == guarded[0]  # the server still serves
