"""The glue to vLLM's internals: decide in the input processor, clamp in the model runner.

Front end: every request passes through ``InputProcessor.process_inputs`` (offline ``LLM``
and the OpenAI server alike); its prompt tokens are decided there and the decision is written
into ``SamplingParams.extra_args`` (overwriting anything a client sent under that key) and into
the request's ``cache_salt``. Worker: after the model loads, a hook on the bundle's decoder
layer applies :class:`TokenClamp`; before each step, ``_prepare_inputs`` fills its per-token
buffer from the scheduled requests' decisions. A request without a decision stops the engine.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from dsg_runtime.vllm.checks import GuardrailRefused, check_config
from dsg_runtime.vllm.clamp import TokenClamp
from dsg_runtime.vllm.decision import FIRED_KEY, PromptDecider, cache_salt

BUNDLE_ENV = "DSG_BUNDLE"
"""The environment variable naming the bundle directory to serve with."""
DEVICE_ENV = "DSG_DECIDE_DEVICE"
"""Where the front end decides prompts (default: cuda when available, else cpu)."""
_MARK = "__dsg_guardrail__"


class RequestRefused(ValueError):
    """A request the guardrail cannot decide (vLLM answers it with a client error)."""


def bundle_path() -> str | None:
    return os.environ.get(BUNDLE_ENV) or None


def _load_bundle() -> Any:
    from dsg_runtime.bundle import Bundle

    path = bundle_path()
    if path is None:
        raise GuardrailRefused(f"dsg guardrail: {BUNDLE_ENV} is not set in this process")
    return Bundle.load(path)


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


def patch_input_processor() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    _wrap(InputProcessor, "__init__", _guarded_init)
    _wrap(InputProcessor, "process_inputs", _guarded_process_inputs)


def _guarded_init(original: Any) -> Any:
    def init(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original(self, vllm_config, *args, **kwargs)
        check_config(vllm_config)
        import torch

        device = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
        model_config = vllm_config.model_config
        bundle = _load_bundle()
        self._dsg_decider = PromptDecider.load(
            bundle, model_config.model, model_config.dtype, device
        )
        self._dsg_digest = _bundle_digest(str(bundle_path()))

    return init


def _guarded_process_inputs(original: Any) -> Any:
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = original(self, *args, **kwargs)
        decide_request(self._dsg_decider, self._dsg_digest, request)
        return request

    return process_inputs


def decide_request(decider: PromptDecider, digest: str, request: Any) -> None:
    """Decide an ``EngineCoreRequest`` on its prompt tokens and attach the decision."""
    params = request.sampling_params
    if params is None or request.pooling_params is not None:
        raise RequestRefused("dsg guardrail: pooling requests are not guarded; refused")
    if request.prompt_embeds is not None or request.mm_features:
        raise RequestRefused(
            "dsg guardrail: prompts given as embeddings or with multimodal inputs cannot be "
            "decided; refused"
        )
    fired = decider.decide(list(request.prompt_token_ids))
    params.extra_args = {**(params.extra_args or {}), FIRED_KEY: fired}
    request.cache_salt = cache_salt(request.cache_salt, digest, fired)


# ----------------------------------------------------------------------------- worker


def patch_model_runner() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for cls in (GPUModelRunner, CPUModelRunner):
        if "load_model" in cls.__dict__:
            _wrap(cls, "load_model", _guarded_load_model)
    _wrap(GPUModelRunner, "_prepare_inputs", _guarded_prepare_inputs)


def _guarded_load_model(original: Any) -> Any:
    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        check_config(self.vllm_config)
        self._dsg_clamp = install(self.get_model(), _load_bundle(), self.max_num_tokens)

    return load_model


def _guarded_prepare_inputs(original: Any) -> Any:
    def prepare_inputs(
        self: Any, scheduler_output: Any, num_scheduled_tokens: np.ndarray, *args: Any
    ) -> Any:
        clamp = getattr(self, "_dsg_clamp", None)
        if clamp is None:
            raise GuardrailRefused("dsg guardrail: the model runs without the guardrail's hook")
        req_ids = self.input_batch.req_ids[: self.input_batch.num_reqs]
        clamp.fill(request_decisions(self.requests, req_ids), num_scheduled_tokens)
        return original(self, scheduler_output, num_scheduled_tokens, *args)

    return prepare_inputs


def request_decisions(requests: dict[str, Any], req_ids: list[str]) -> np.ndarray:
    """Each scheduled request's decision, in batch order; a request that reached the engine
    without one (it bypassed the input processor) stops the step rather than run unguarded."""
    fired = np.zeros(len(req_ids), dtype=np.bool_)
    for i, req_id in enumerate(req_ids):
        extra = getattr(requests[req_id].sampling_params, "extra_args", None) or {}
        value = extra.get(FIRED_KEY)
        if not isinstance(value, bool):
            raise GuardrailRefused(
                f"dsg guardrail: request {req_id} reached the engine without a decision"
            )
        fired[i] = value
    return fired


def install(model: Any, bundle: Any, max_tokens: int) -> TokenClamp:
    """Hook the bundle's clamp onto the vLLM model's decoder layer; returns the clamp."""
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
    device = next(model.parameters()).device
    clamp = TokenClamp.from_bundle(bundle, max_tokens, device)
    layer = layers[bundle.hook_layer]
    if bundle.hook_point == "hook_resid_post":
        layer.register_forward_hook(_post_hook(clamp))
    else:
        layer.register_forward_pre_hook(_pre_hook(clamp))
    return clamp


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
