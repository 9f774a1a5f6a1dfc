"""What a vLLM engine deciding in the engine (``DSG_DECIDE_IN=engine``) decided, as its runner
keeps each decision: for the tests and ``benchmarks/bench_vllm.py`` to compare with dsg.hf's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def kept_decisions(
    patch: Callable[[Any, str, Any], None] = setattr,
) -> list[tuple[tuple[int, ...], bool]]:
    """``(prompt token ids, decision)`` for every decision this process's engine keeps from
    now on, in the order kept. ``patch`` installs the recorder (a test passes its monkeypatch's
    ``setattr``, so the recorder goes when the test ends)."""
    import dsg_runtime.vllm.engine as glue

    kept: list[tuple[tuple[int, ...], bool]] = []
    keep = glue.keep_decisions

    def recorded(requests: dict[str, Any], pending: list[tuple[int, str]], clamp: Any) -> None:
        keep(requests, pending, clamp)
        for _, req_id in pending:
            if req_id in requests:
                state = requests[req_id]
                kept.append((tuple(state.prompt_token_ids), bool(state._dsg_fired)))

    patch(glue, "keep_decisions", recorded)
    return kept
