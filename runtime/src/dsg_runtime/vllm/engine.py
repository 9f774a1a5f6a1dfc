"""The glue to vLLM's internals: decide in the input processor, check in the engine core, clamp
in the model runner.

Front end: every request passes through ``InputProcessor.process_inputs`` (offline ``LLM``
and the OpenAI server alike); the decision on its prompt tokens, sealed
(:mod:`dsg_runtime.vllm.seal`), is written there into ``SamplingParams.extra_args``
(overwriting anything a client sent under those keys) and into the request's ``cache_salt``.
Decisions are taken ahead, batched, where the prompt's tokens are known before
``process_inputs``: ``AsyncLLM.add_request`` (the server's entry point) awaits the decision of
a token prompt from a decider thread that batches the prompts queued together
(:mod:`dsg_runtime.vllm.batcher`), so the event loop never runs a forward pass; the offline
``LLM`` decides the prompts of one call together, on its own thread. ``process_inputs`` finds
the decision of its exact tokens in the calling context, or decides the prompt alone where it
runs (raw prompts given to ``AsyncLLM``, deprecated by vLLM: on its tokenizer threads). Beam search,
which resubmits the prompt with each beam's tokens as new requests, is refused. Before the
first request, the front end has every engine process prove that it guards with the same
bundle and holds the same key.

Engine core: a request whose seal does not verify (built by hand and added past the input
processor, or decided under another bundle) is refused alone, before it reaches the scheduler;
vLLM answers that request with an error and serves the others. Worker: after the model loads,
a hook on the bundle's decoder layer applies :class:`TokenClamp`; before each step,
``_prepare_inputs`` fills its per-token buffer from the scheduled requests' verified decisions.
Weight updates are refused: the front end decides on the weights it loaded.

With ``DSG_DECIDE_IN=engine`` (:mod:`dsg_runtime.vllm.in_engine`) the front end loads no decider
and seals nothing, the engine core checks no seal, and the worker's clamp decides each request in
the step that prefills its whole prompt: ``_prepare_inputs`` marks which requests decide in the
step, and ``execute_model`` leaves each decision with its request right after the forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import numpy as np

from dsg_runtime.vllm.batcher import DecisionBatcher
from dsg_runtime.vllm.checks import (
    LAYER_PARAMETERS,
    TESTED_ARCHITECTURES,
    GuardrailRefused,
    check_config,
)
from dsg_runtime.vllm.clamp import TokenClamp
from dsg_runtime.vllm.decision import PromptDecider, cache_salt
from dsg_runtime.vllm.in_engine import (
    DECIDED,
    ENGINE_TAG,
    decides_in_engine,
    engine_threshold,
    keep_decisions,
    step_decisions,
)
from dsg_runtime.vllm.seal import (
    FIRED_KEY,
    SEAL_KEY,
    check_proofs,
    key,
    prove,
    seal,
    sealed_decision,
)

BUNDLE_ENV = "DSG_BUNDLE"
"""The environment variable naming the bundle directory to serve with."""
DEVICE_ENV = "DSG_DECIDE_DEVICE"
"""Where the front end decides prompts (default: cuda when available, else cpu)."""
PROOF_METHOD = "dsg_guardrail_proof"
"""The engine core's and the workers' answer to the front end's start-up challenge."""
WEIGHT_UPDATES = (
    "update_config",
    "reload_weights",
    "reset_weights",
    "init_weight_transfer_engine",
    "start_weight_update",
    "start_draft_weight_update",
    "update_weights",
    "finish_weight_update",
)
"""The worker's ways to change the served weights after start-up."""
_MARK = "__dsg_guardrail__"
_DECIDED_AHEAD: ContextVar[Mapping[tuple[int, ...], bool] | None] = ContextVar(
    "dsg_decided_ahead", default=None
)
"""Decisions taken before ``process_inputs`` by this call (its task or thread only), by prompt."""
log = logging.getLogger(__name__)


class RequestRefused(ValueError):
    """A request the guardrail cannot decide or verify (vLLM answers it with a client error)."""


def bundle_path() -> str | None:
    return os.environ.get(BUNDLE_ENV) or None


def load_bundle() -> tuple[Any, str]:
    """This process's bundle and the digest of exactly what was loaded (the digest is read
    before and after the load: a bundle replaced meanwhile is refused), tagged when the engine
    decides (so a front end and engine processes that decide in different places never prove
    to each other)."""
    from dsg_runtime.bundle import Bundle

    path = bundle_path()
    if path is None:
        raise GuardrailRefused(f"dsg guardrail: {BUNDLE_ENV} is not set in this process")
    before = _bundle_digest(path)
    bundle = Bundle.load(path)
    if _bundle_digest(path) != before:
        raise GuardrailRefused(f"dsg guardrail: the bundle at {path} changed while loading")
    return bundle, f"{before}{ENGINE_TAG}" if decides_in_engine() else before


def _bundle_digest(bundle_dir: str) -> str:
    from pathlib import Path

    from dsg_runtime.atomic import read_json
    from dsg_runtime.bundle import CONFIG_FILE, DIGEST_FIELD

    return str(read_json(Path(bundle_dir) / CONFIG_FILE)[DIGEST_FIELD])


def _wrap(cls: type, name: str, make: Any) -> None:
    original = cls.__dict__.get(name)
    if original is None:
        raise GuardrailRefused(
            f"dsg guardrail: vLLM's {cls.__name__}.{name} is missing; this vLLM is not the one "
            "the plugin was tested with"
        )
    if getattr(original, _MARK, False):
        return
    wrapped = functools.wraps(original)(make(original))
    setattr(wrapped, _MARK, True)
    setattr(cls, name, wrapped)


# ----------------------------------------------------------------------------- front end


def patch_front_end() -> None:
    from vllm.entrypoints.common.offline import OfflineInferenceMixin
    from vllm.entrypoints.generate.beam_search.offline import BeamSearchOfflineMixin
    from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.llm_engine import LLMEngine

    _wrap(InputProcessor, "__init__", _guarded_init)
    _wrap(InputProcessor, "process_inputs", _guarded_process_inputs)
    _wrap(BeamSearchOfflineMixin, "beam_search", _refused_beam_search)
    _wrap(BeamSearchOnlineMixin, "beam_search", _refused_beam_search)
    _wrap(LLMEngine, "__init__", _checked_llm_engine)
    _wrap(LLMEngine, "add_request", _checked_engine_core_request)
    _wrap(OfflineInferenceMixin, "_render_and_add_requests", _decided_together)
    _wrap(AsyncLLM, "add_request", _decided_ahead_async)
    _wrap(AsyncLLM, "get_supported_tasks", _checked_async)  # the server asks it at start-up
    _wrap(AsyncLLM, "_add_request", _checked_async)  # every request of every entry point


def _guarded_init(original: Any) -> Any:
    def init(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original(self, vllm_config, *args, **kwargs)
        in_engine = decides_in_engine()
        check_config(vllm_config, in_engine)
        import torch

        device = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
        model_config = vllm_config.model_config
        bundle, self._dsg_digest = load_bundle()
        self._dsg_key = key()
        self._dsg_decider = self._dsg_batcher = None
        if in_engine:
            return  # the engine decides each request when it prefills the prompt
        self._dsg_decider = PromptDecider.load(
            bundle,
            model_config.model,
            model_config.dtype,
            device,
            revision=model_config.revision,
            cache_dir=vllm_config.load_config.download_dir,
        )
        self._dsg_batcher = DecisionBatcher(self._dsg_decider)

    return init


def _guarded_process_inputs(original: Any) -> Any:
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("resumable"):
            raise RequestRefused(
                "dsg guardrail: streamed prompts grow after their first part is decided; refused"
            )
        request = original(self, *args, **kwargs)
        decide_request(self._dsg_decider, self._dsg_digest, self._dsg_key, request)
        return request

    return process_inputs


def prompt_tokens(prompt: Any) -> list[int] | None:
    """The token ids of a rendered token input (what the server and the offline ``LLM`` hand
    the input processor), which can be decided before it; None for any other prompt (a raw
    prompt, deprecated by vLLM, is decided where ``process_inputs`` renders it)."""
    if not isinstance(prompt, Mapping) or prompt.get("type") != "token":
        return None
    ids = prompt.get("prompt_token_ids")
    if not isinstance(ids, list) or not ids or any(type(t) is not int for t in ids):
        return None
    return ids


@contextlib.contextmanager
def _decided_ahead(decisions: Mapping[tuple[int, ...], bool]) -> Iterator[None]:
    """Inside, ``process_inputs`` of this task or thread finds ``decisions`` (by prompt)."""
    token = _DECIDED_AHEAD.set(decisions)
    try:
        yield
    finally:
        _DECIDED_AHEAD.reset(token)


def _decided_together(original: Any) -> Any:
    """The offline ``LLM`` adds the prompts of one call one by one: their decisions are taken
    first, together, for ``process_inputs`` to find (a prompt whose decision failed is decided
    again there, and fails there)."""

    def render_and_add_requests(self: Any, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        prompts = list(prompts)
        batcher = getattr(self.llm_engine.input_processor, "_dsg_batcher", None)
        wanted = {tuple(ids) for p in prompts if (ids := prompt_tokens(p)) is not None}
        ahead = {} if batcher is None else batcher.decide_here([list(t) for t in wanted])
        with _decided_ahead(ahead):
            return original(self, prompts, *args, **kwargs)

    return render_and_add_requests


def _decided_ahead_async(original: Any) -> Any:
    """The server's entry point: a token prompt's decision is awaited here, off the event loop
    and batched with the requests arriving meanwhile, so ``process_inputs``, which runs on the
    event loop for rendered inputs, finds it. A request given as an ``EngineCoreRequest``
    skips the input processor: its seal is checked instead."""

    async def add_request(self: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        ids = prompt_tokens(_checked_prompt(self, args, kwargs))
        batcher = self.input_processor._dsg_batcher
        if ids is None or batcher is None:  # no token prompt, or the engine decides
            return await original(self, request_id, *args, **kwargs)
        fired = await asyncio.wrap_future(batcher.submit(ids))
        with _decided_ahead({tuple(ids): fired}):
            return await original(self, request_id, *args, **kwargs)

    return add_request


def decide_request(decider: Any, digest: str, secret: bytes, request: Any) -> None:
    """Decide an ``EngineCoreRequest`` on its prompt tokens (the decision this call took ahead
    for exactly these tokens, else ``decider.decide``'s) and attach the sealed decision; with
    no decider (the engine decides) only refuse what the engine could not decide."""
    params = request.sampling_params
    if params is None or request.pooling_params is not None:
        raise RequestRefused("dsg guardrail: pooling requests are not guarded; refused")
    if request.prompt_embeds is not None or request.mm_features:
        raise RequestRefused(
            "dsg guardrail: prompts given as embeddings or with multimodal inputs cannot be "
            "decided; refused"
        )
    if decider is None:
        return
    ids = list(request.prompt_token_ids)
    fired = (_DECIDED_AHEAD.get() or {}).get(tuple(ids))
    if fired is None:
        fired = decider.decide(ids)
    tag = seal(secret, ids, fired, digest)
    params.extra_args = {**(params.extra_args or {}), FIRED_KEY: fired, SEAL_KEY: tag}
    request.cache_salt = cache_salt(request.cache_salt, digest, fired)


def _refused_beam_search(original: Any) -> Any:
    def beam_search(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RequestRefused(
            "dsg guardrail: beam search resubmits the prompt with each beam's tokens as new "
            "requests, each decided again; refused (use sampling or greedy decoding)"
        )

    return beam_search


def _checked_engine_core_request(original: Any) -> Any:
    """``add_request`` also takes a ready ``EngineCoreRequest``, which skips the input
    processor: its seal is checked here, before vLLM registers it for output (a request the
    engine core refused after that would stay unfinished in an in-process engine)."""

    def add_request(self: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        _checked_prompt(self, args, kwargs)
        return original(self, request_id, *args, **kwargs)

    return add_request


def _checked_prompt(engine: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The prompt of ``engine.add_request(request_id, *args, **kwargs)``, once a ready
    ``EngineCoreRequest`` among them has had its seal checked."""
    from vllm.v1.engine import EngineCoreRequest

    prompt = kwargs.get("prompt", args[0] if args else None)
    if isinstance(prompt, EngineCoreRequest):
        processor = engine.input_processor
        check_request(prompt, processor._dsg_key, processor._dsg_digest)
    return prompt


def _checked_llm_engine(original: Any) -> Any:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        client = self.engine_core
        call = getattr(client, "call_utility", None)  # the engine core in another process
        nonce = secrets.token_hex(16)
        try:
            proofs = (
                call(PROOF_METHOD, nonce)
                if call is not None
                else getattr(client.engine_core, PROOF_METHOD)(nonce)
            )
        except Exception as exc:
            client.shutdown()
            raise _unproved(exc) from None
        try:
            _check_engine(self.input_processor, nonce, proofs)
        except GuardrailRefused:
            client.shutdown()  # no engine processes left behind a refused start
            raise

    return init


def _checked_async(original: Any) -> Any:
    async def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_dsg_engine_proved", False):
            nonce = secrets.token_hex(16)
            try:
                proofs = await self.engine_core.call_utility_async(PROOF_METHOD, nonce)
            except Exception as exc:
                raise _unproved(exc) from None
            _check_engine(self.input_processor, nonce, proofs)
            self._dsg_engine_proved = True
        return await original(self, *args, **kwargs)

    return checked


def _unproved(exc: Exception) -> GuardrailRefused:
    return GuardrailRefused(
        "dsg guardrail: the engine runs without the guardrail (no DSG_BUNDLE or no plugin in "
        f"its processes: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
        "refusing to serve"
    )


def _check_engine(input_processor: Any, nonce: str, proofs: Any) -> None:
    digest = getattr(input_processor, "_dsg_digest", None)
    if digest is None:
        raise GuardrailRefused("dsg guardrail: the front end has no decider; refusing to serve")
    check_proofs(input_processor._dsg_key, nonce, digest, proofs)


# ----------------------------------------------------------------------------- engine core


def patch_engine_core() -> None:
    from vllm.v1.engine.core import EngineCore

    _wrap(EngineCore, "preprocess_add_request", _checked_preprocess)
    _add(EngineCore, PROOF_METHOD, _engine_core_proof)


def _add(cls: type, name: str, method: Any) -> None:
    if name not in cls.__dict__:
        setattr(cls, name, method)


def _engine_core_guard(core: Any) -> tuple[bytes, str]:
    """The engine core's key and bundle digest, read once (vLLM loads plugins while the engine
    core is being built, so this cannot wait on its constructor)."""
    guard = vars(core).get("_dsg_guard")
    if guard is None:
        _, digest = load_bundle()
        guard = core._dsg_guard = (key(), digest)
    return guard  # type: ignore[no-any-return]


def _engine_core_proof(self: Any, nonce: str) -> list[dict[str, str]]:
    secret, digest = _engine_core_guard(self)
    workers = self.collective_rpc(PROOF_METHOD, args=(nonce,))
    return [prove(secret, nonce, "engine core", digest), *workers]


def _checked_preprocess(original: Any) -> Any:
    def preprocess_add_request(self: Any, request: Any) -> Any:
        check_request(request, *_engine_core_guard(self))
        return original(self, request)

    return preprocess_add_request


def check_request(request: Any, secret: bytes, digest: str) -> bool:
    """An ``EngineCoreRequest``'s decision, if the front end of this server made it for this
    prompt under this bundle and its cache salt follows it; otherwise the request is refused
    (alone: vLLM answers it with an error and serves the rest). When the engine decides (``digest``
    carries :data:`~dsg_runtime.vllm.in_engine.ENGINE_TAG`, as this process loaded it), only
    requests it could not decide are refused (the return value means nothing then)."""
    params = request.sampling_params
    if params is None or request.pooling_params is not None:
        raise RequestRefused("dsg guardrail: pooling requests are not guarded; refused")
    if getattr(request, "resumable", False):
        raise RequestRefused(
            "dsg guardrail: streamed prompts grow after their first part is decided; refused"
        )
    if request.prompt_embeds is not None or request.mm_features or not request.prompt_token_ids:
        raise RequestRefused("dsg guardrail: a request without plain prompt tokens; refused")
    if digest.endswith(ENGINE_TAG):  # this process proved that it decides in the engine
        return True  # decided when its prompt is prefilled; what it carries is never read
    fired = sealed_decision(params.extra_args, secret, request.prompt_token_ids, digest)
    if fired is None:
        raise RequestRefused(
            f"dsg guardrail: request {request.request_id} carries no decision this server's "
            "front end made for its prompt and bundle; refused"
        )
    if not (request.cache_salt or "").startswith(cache_salt(None, digest, fired)):
        raise RequestRefused(
            f"dsg guardrail: request {request.request_id}'s cache salt does not follow its "
            "decision; refused"
        )
    return fired


# ----------------------------------------------------------------------------- worker


def patch_worker() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    for cls in (GPUModelRunner, CPUModelRunner):
        if "load_model" in cls.__dict__:
            _wrap(cls, "load_model", _guarded_load_model)
    _wrap(GPUModelRunner, "_prepare_inputs", _guarded_prepare_inputs)
    _wrap(GPUModelRunner, "execute_model", _decisions_kept)
    for name in WEIGHT_UPDATES:
        _wrap(Worker, name, _refused_weight_update)
    _add(Worker, PROOF_METHOD, _worker_proof)


def _refused_weight_update(original: Any) -> Any:
    def refused(self: Any, *args: Any, **kwargs: Any) -> None:
        raise GuardrailRefused(
            f"dsg guardrail: {original.__name__} would change the served weights, but the front "
            "end decides on the weights it loaded; restart the server with the new model"
        )

    return refused


def _worker_proof(self: Any, nonce: str) -> dict[str, str]:
    runner = self.model_runner
    digest = getattr(runner, "_dsg_digest", None)
    if digest is None:
        raise GuardrailRefused("dsg guardrail: this worker's model runs without the clamp")
    return prove(runner._dsg_key, nonce, "worker", digest)


def _guarded_load_model(original: Any) -> Any:
    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("load_dummy_weights"):
            raise GuardrailRefused("dsg guardrail: dummy weights are not the model it decides on")
        original(self, *args, **kwargs)
        self._dsg_decides = decides_in_engine()
        check_config(self.vllm_config, self._dsg_decides)
        bundle, digest = load_bundle()
        self._dsg_key = key()
        threshold = engine_threshold(bundle) if self._dsg_decides else None
        self._dsg_clamp = install(
            self.get_model(), bundle, self.max_num_tokens, threshold, self.max_num_reqs
        )
        self._dsg_pending = []  # (batch row, request id) decided in the last step
        self._dsg_digest = digest

    return load_model


def _guarded_prepare_inputs(original: Any) -> Any:
    def prepare_inputs(
        self: Any, scheduler_output: Any, num_scheduled_tokens: np.ndarray, *args: Any
    ) -> Any:
        clamp = getattr(self, "_dsg_clamp", None)
        if clamp is None:
            raise GuardrailRefused("dsg guardrail: the model runs without the guardrail's hook")
        req_ids = self.input_batch.req_ids[: self.input_batch.num_reqs]
        if self._dsg_decides:
            if self._dsg_pending:
                raise GuardrailRefused(
                    "dsg guardrail: a step began before the last step's decisions were kept"
                )
            computed = self.input_batch.num_computed_tokens_cpu[: len(req_ids)]
            decides = clamp.threshold is not None
            fired, deciding = step_decisions(
                self.requests, req_ids, computed, num_scheduled_tokens, decides
            )
            clamp.fill(fired, num_scheduled_tokens, deciding if decides else None)
            self._dsg_pending = [(int(i), req_ids[i]) for i in np.flatnonzero(deciding)]
        else:
            decisions = request_decisions(self.requests, req_ids, self._dsg_key, self._dsg_digest)
            clamp.fill(decisions, num_scheduled_tokens)
        return original(self, scheduler_output, num_scheduled_tokens, *args)

    return prepare_inputs


def _decisions_kept(original: Any) -> Any:
    """Deciding in the engine: right after the forward pass that decided them, each request
    keeps its decision (read before any other pass can overwrite the clamp's buffer); should
    the step fail, those requests are clamped as if they fired."""

    def execute_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            out = original(self, *args, **kwargs)
        except BaseException:
            for _, req_id in getattr(self, "_dsg_pending", ()):
                if req_id in self.requests:
                    setattr(self.requests[req_id], DECIDED, True)
            self._dsg_pending = []
            raise
        if getattr(self, "_dsg_pending", None):
            keep_decisions(self.requests, self._dsg_pending, self._dsg_clamp)
            self._dsg_pending = []
        return out

    return execute_model


def request_decisions(
    requests: dict[str, Any], req_ids: list[str], secret: bytes, digest: str
) -> np.ndarray:
    """Each scheduled request's decision, in batch order, verified once per request against
    the bundle this worker clamps with. The engine core refuses unsealed requests before they
    are scheduled; one that reaches the worker anyway (added past the engine core) is clamped
    as if it fired, and logged: never served unguarded, never failing the step for the rest."""
    fired = np.zeros(len(req_ids), dtype=np.bool_)
    for i, req_id in enumerate(req_ids):
        state = requests[req_id]
        decided = vars(state).get(DECIDED)
        if decided is None:
            extra = getattr(state.sampling_params, "extra_args", None)
            decided = sealed_decision(extra, secret, state.prompt_token_ids or [], digest)
            if decided is None:
                log.error(
                    "dsg guardrail: request %s reached the worker without a verified decision; "
                    "clamped as if it fired",
                    req_id,
                )
                decided = True
            setattr(state, DECIDED, decided)
        fired[i] = decided
    return fired


def install(
    model: Any,
    bundle: Any,
    max_tokens: int,
    threshold: float | None = None,
    max_requests: int = 0,
) -> TokenClamp:
    """Hook the bundle's clamp onto the vLLM model's decoder layer (deciding with
    ``threshold`` when the engine decides); returns the clamp."""
    if type(model).__name__ not in TESTED_ARCHITECTURES:
        raise GuardrailRefused(
            f"dsg guardrail: vLLM built a {type(model).__name__} (tested: "
            f"{', '.join(TESTED_ARCHITECTURES)}); refusing to serve rather than serve unguarded"
        )
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or bundle.hook_layer >= len(layers):
        raise GuardrailRefused(
            f"dsg guardrail: cannot find decoder layer {bundle.hook_layer} in a "
            f"{type(model).__name__}"
        )
    hidden = getattr(getattr(model, "config", None), "hidden_size", bundle.d_model)
    if hidden != bundle.d_model:
        raise GuardrailRefused(
            f"dsg guardrail: the bundle reads vectors of size {bundle.d_model} but the model's "
            f"hidden size is {hidden}"
        )
    layer = layers[bundle.hook_layer]
    check_layer(layer)
    device = next(model.parameters()).device
    clamp = TokenClamp.from_bundle(bundle, max_tokens, device, threshold, max_requests)
    if bundle.hook_point == "hook_resid_post":
        layer.register_forward_hook(_post_hook(clamp))
    else:
        layer.register_forward_pre_hook(_pre_hook(clamp))
    return clamp


def check_layer(layer: Any) -> None:
    """Refuse a decoder layer whose ``forward`` is not ``(positions, hidden_states, residual)``:
    the hooks would read the wrong tensors as the residual stream."""
    import inspect

    forward = getattr(type(layer), "forward", None)
    names = () if forward is None else tuple(inspect.signature(forward).parameters)
    if names != LAYER_PARAMETERS:
        raise GuardrailRefused(
            f"dsg guardrail: the decoder layer {type(layer).__name__}.forward takes "
            f"({', '.join(names)}), not ({', '.join(LAYER_PARAMETERS)}); refusing to serve "
            "rather than serve unguarded"
        )


def _pre_hook(clamp: TokenClamp) -> Any:
    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        positions, hidden, residual = args
        return (positions, *clamp.residual(positions, hidden, residual))

    return hook


def _post_hook(clamp: TokenClamp) -> Any:
    def hook(module: Any, args: tuple[Any, ...], output: tuple[Any, Any]) -> tuple[Any, Any]:
        hidden, residual = output
        return clamp.residual(args[0], hidden, residual)

    return hook
