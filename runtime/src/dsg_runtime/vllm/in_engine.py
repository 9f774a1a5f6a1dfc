"""Deciding inside the engine (``DSG_DECIDE_IN=engine``): a request is decided in the step that
prefills its whole prompt, on the residual the engine computes there anyway, instead of by a
separate forward pass in the front end.

What this trades: the front end's decision is ``dsg.hf``'s bit for bit (the same ``transformers``
layers); the engine's is taken on vLLM's residual, whose kernels round differently, so it can
differ from ``dsg.hf``'s where a feature's pre-activation lies within rounding of its threshold.
What it saves: the front end's forward pass through the layers up to the hook (on the CPU,
about two thirds of vLLM's own prefill for SmolLM2's hook at layer 7; docs/serving.md).

What it needs, refused otherwise at start-up
(:func:`~dsg_runtime.vllm.checks.engine_config_problems`): every prompt prefilled whole in one
step (no chunked prefill, no long-prefill cap, no prefix caching: a cached prefix is not
recomputed, so it could not be decided on), the dynamic gate (or the static clamp, which
decides nothing) and the CPU runner, where it was measured. A request whose prompt reaches a
step in part anyway is clamped as if it fired, and logged: never served unguarded (a recompute
after preemption keeps its first decision).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from dsg_runtime.vllm.checks import GuardrailRefused

DECIDE_ENV = "DSG_DECIDE_IN"
"""Where requests are decided: ``front-end`` (the default) or ``engine``."""
ENGINE_TAG = "+engine-decides"
"""Appended to the bundle digest a process proves when it decides in the engine, so a front end
and engine processes that decide in different places refuse to serve together."""
DECIDED = "_dsg_fired"
"""The attribute of the worker's request state that holds its decision, once taken."""
log = logging.getLogger(__name__)


def decides_in_engine() -> bool:
    """Whether this process's guardrail decides in the engine (``DSG_DECIDE_IN``)."""
    where = os.environ.get(DECIDE_ENV) or "front-end"
    if where not in ("front-end", "engine"):
        raise GuardrailRefused(
            f"dsg guardrail: {DECIDE_ENV}={where!r}; use 'front-end' (the default) or 'engine'"
        )
    return where == "engine"


def engine_threshold(bundle: Any) -> float | None:
    """The rate threshold the engine decides with: the dynamic gate's; None for the static
    clamp (every request clamps its hits, nothing to decide). Other gates are refused."""
    from dsg_runtime.guardrail import AnyHitGate, ThresholdGate

    gate = bundle.guardrail().gate
    if isinstance(gate, AnyHitGate):
        return None
    if type(gate) is not ThresholdGate:
        raise GuardrailRefused(
            f"dsg guardrail: the engine decides with the dynamic gate only, not the "
            f"{bundle.strategy!r} strategy's; decide in the front end ({DECIDE_ENV}=front-end)"
        )
    return gate.threshold


def step_decisions(
    requests: dict[str, Any],
    req_ids: list[str],
    computed: np.ndarray,
    scheduled: np.ndarray,
    decides: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Before a step: each scheduled request's decision where it has one, and which requests
    decide in this step (those whose whole prompt, and nothing else, is scheduled from its first
    token). A request that has neither is clamped as if it fired from now on, and logged.
    ``decides`` False (the static clamp): every request fires, none decides."""
    fired = np.ones(len(req_ids), dtype=np.bool_)
    deciding = np.zeros(len(req_ids), dtype=np.bool_)
    if not decides:
        return fired, deciding
    for i, req_id in enumerate(req_ids):
        state = requests[req_id]
        known = vars(state).get(DECIDED)
        if known is not None:
            fired[i] = known
        elif computed[i] == 0 and scheduled[i] == state.num_prompt_tokens:
            deciding[i], fired[i] = True, False
        else:
            log.error(
                "dsg guardrail: request %s's prompt reached the engine in part (%d tokens from "
                "position %d of %d) before it was decided; clamped as if it fired",
                req_id,
                scheduled[i],
                computed[i],
                state.num_prompt_tokens,
            )
            setattr(state, DECIDED, True)
    return fired, deciding


def keep_decisions(requests: dict[str, Any], pending: list[tuple[int, str]], clamp: Any) -> None:
    """Right after the forward pass that decided ``pending`` (batch row, request id): each
    request keeps its decision for its later steps (a request no longer there is skipped). A
    row no pass decided (the step's forward did not run) fires, and is logged."""
    if not pending:
        return
    decided = clamp.decided_rows(max(row for row, _ in pending) + 1)
    for row, req_id in pending:
        state = requests.get(req_id)
        if state is None:
            continue
        fired = bool(decided[row] != 0)
        if decided[row] < 0:
            log.error(
                "dsg guardrail: no forward pass decided request %s; clamped as if it fired",
                req_id,
            )
        setattr(state, DECIDED, fired)
        log.debug("dsg guardrail: request %s decided in the engine: %s", req_id, fired)
