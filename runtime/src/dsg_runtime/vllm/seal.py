"""Decisions the engine can trust: an HMAC the front end puts on each decision, and the proof
by which every engine process shows, at start-up, that it guards with the same bundle and key.

A seal certifies one fact: "under the bundle of this digest, this exact prompt (its token ids)
was decided fired / not fired". It binds the prompt rather than the request id (vLLM renames
requests after the input processor, and fans ``n > 1`` out into children that share the
prompt): a seal copied onto another request with the same prompt certifies the true decision
of that request, and a seal with any token, the decision or the bundle changed does not verify.

The key is made by the first process that registers the plugin (the one that starts the
server or the offline engine) and reaches the engine processes vLLM starts through their
inherited environment. It never travels in a request, so no client can read it or set it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsg_runtime.vllm.checks import GuardrailRefused
from dsg_runtime.vllm.in_engine import ENGINE_TAG

KEY_ENV = "DSG_DECISION_KEY"
"""The environment variable that hands the decision key to the processes vLLM starts."""
FIRED_KEY = "dsg_fired"
"""The ``SamplingParams.extra_args`` key that carries a request's decision to the engine."""
SEAL_KEY = "dsg_seal"
"""The ``SamplingParams.extra_args`` key that carries the decision's seal."""


def ensure_key() -> None:
    """Make the key in the process that starts vLLM; its children inherit it."""
    if not os.environ.get(KEY_ENV):
        os.environ[KEY_ENV] = secrets.token_hex(32)


def key() -> bytes:
    value = os.environ.get(KEY_ENV)
    if not value:
        raise GuardrailRefused(
            f"dsg guardrail: {KEY_ENV} is not set in this process, so it cannot check the "
            "front end's decisions; start vLLM from a process with the plugin and DSG_BUNDLE"
        )
    return value.encode()


def _prompt_bytes(token_ids: Sequence[int]) -> bytes:
    return np.asarray(token_ids, dtype="<i8").tobytes()


def seal(secret: bytes, token_ids: Sequence[int], fired: bool, digest: str) -> str:
    message = b"\0".join(
        [b"dsg-decision", digest.encode(), b"1" if fired else b"0", _prompt_bytes(token_ids)]
    )
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sealed_decision(
    extra_args: Mapping[str, Any] | None, secret: bytes, token_ids: Sequence[int], digest: str
) -> bool | None:
    """The request's decision when its seal verifies for this prompt and bundle, else None."""
    extra = extra_args or {}
    fired, tag = extra.get(FIRED_KEY), extra.get(SEAL_KEY)
    if not isinstance(fired, bool) or not isinstance(tag, str):
        return None
    return fired if hmac.compare_digest(tag, seal(secret, token_ids, fired, digest)) else None


def prove(secret: bytes, nonce: str, role: str, digest: str) -> dict[str, str]:
    """A process's answer to the front end's start-up challenge: its bundle and its key."""
    message = b"\0".join([b"dsg-proof", nonce.encode(), role.encode(), digest.encode()])
    tag = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return {"role": role, "digest": digest, "tag": tag}


def check_proofs(secret: bytes, nonce: str, digest: str, proofs: Any) -> None:
    """Refuse to serve unless every engine process answered with this bundle and this key."""
    if not isinstance(proofs, list) or not proofs:
        raise GuardrailRefused("dsg guardrail: the engine gave no proof of its guardrail")
    for proof in proofs:
        role = str(proof.get("role")) if isinstance(proof, dict) else "?"
        if not isinstance(proof, dict) or proof.get("digest") != digest:
            theirs = proof.get("digest") if isinstance(proof, dict) else None
            raise GuardrailRefused(
                f"dsg guardrail: the engine's {role} guards with bundle {shown(theirs)} but the "
                f"front end with {shown(digest)}; start every process with the same DSG_BUNDLE "
                "and DSG_DECIDE_IN"
            )
        expected = prove(secret, nonce, role, digest)["tag"]
        if not hmac.compare_digest(str(proof.get("tag")), expected):
            raise GuardrailRefused(
                f"dsg guardrail: the engine's {role} does not hold the front end's decision key; "
                "start the engine from the process that starts the front end"
            )


def shown(digest: object) -> str:
    """A bundle digest as refusals print it: its first 16 characters and where it decides."""
    bundle, tagged, _ = str(digest).partition(ENGINE_TAG)
    return f"{bundle:.16} (deciding in the {'engine' if tagged else 'front end'})"
