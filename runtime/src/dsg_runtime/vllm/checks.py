"""What the vLLM guardrail refuses at start-up: anything it was not tested with.

Each refusal is one line (:class:`GuardrailRefused`) raised before a request is served, so a
configuration the plugin cannot follow never serves unguarded.
"""

from __future__ import annotations

from typing import Any

TESTED_VLLM = ("0.32.0",)
"""vLLM releases whose internals (input processor, model runner, decoder layers) were tested."""
TESTED_ARCHITECTURES = ("Gemma2ForCausalLM", "LlamaForCausalLM")
"""Model classes whose decoder layers take ``(positions, hidden_states, residual)`` and return
``(hidden_states, residual)`` with the stream their sum (vLLM's fused add-norm), tested."""
LAYER_PARAMETERS = ("self", "positions", "hidden_states", "residual")
"""The decoder layer's ``forward`` parameters the clamp's hooks read and rewrite."""


class GuardrailRefused(RuntimeError):
    """The guardrail cannot guard this vLLM set-up, so the engine must not start."""


def check_version(version: str) -> None:
    if version not in TESTED_VLLM:
        raise GuardrailRefused(
            f"dsg guardrail: vLLM {version} is untested (tested: {', '.join(TESTED_VLLM)}); "
            "refusing to serve rather than serve unguarded"
        )


LOAD_FORMATS = ("auto", "safetensors")
"""Weight formats the front end's ``transformers`` copy reads the same way vLLM does."""
MODEL_IMPLEMENTATIONS = ("auto", "vllm")


def check_config(vllm_config: Any, in_engine: bool = False) -> None:
    """Refuse parallelism, speculative decoding, KV transfer, pooling, the V2 model runner and
    model classes the guardrail was not tested with; and anything by which the engine would
    serve other weights than the front end decides on (LoRA, quantization, config overrides,
    separate weights, dummy or other weight formats, weight updates); with ``in_engine``
    (requests decided in the engine), also whatever would bring the engine a prompt in parts."""
    parallel = vllm_config.parallel_config
    model_config = vllm_config.model_config
    load_format = str(vllm_config.load_config.load_format)
    architectures = tuple(getattr(model_config, "architectures", None) or ())
    problems = [
        (parallel.tensor_parallel_size != 1, "tensor parallelism"),
        (parallel.pipeline_parallel_size != 1, "pipeline parallelism"),
        (parallel.data_parallel_size != 1, "data parallelism"),
        (vllm_config.speculative_config is not None, "speculative decoding"),
        (vllm_config.kv_transfer_config is not None, "KV-cache transfer"),
        (getattr(vllm_config, "use_v2_model_runner", False), "the V2 model runner"),
        (model_config.runner_type != "generate", f"the {model_config.runner_type!r} runner"),
        (
            not architectures or any(a not in TESTED_ARCHITECTURES for a in architectures),
            f"model class {'/'.join(architectures) or 'unknown'} "
            f"(tested: {', '.join(TESTED_ARCHITECTURES)})",
        ),
        (vllm_config.lora_config is not None, "LoRA adapters (--enable-lora)"),
        (
            model_config.quantization is not None or bool(model_config.quantization_config),
            "quantization",
        ),
        (bool(model_config.hf_overrides), "hf_overrides"),
        (bool(model_config.model_class_overrides), "model class overrides"),
        (model_config.hf_config_path is not None, "a config from another path"),
        (bool(model_config.model_weights), "weights from another path (model_weights)"),
        (
            str(model_config.model_impl) not in MODEL_IMPLEMENTATIONS,
            f"model_impl {model_config.model_impl!s}",
        ),
        (load_format not in LOAD_FORMATS, f"load format {load_format}"),
        (vllm_config.weight_transfer_config is not None, "weight transfer (weight updates)"),
        (bool(parallel.worker_extension_cls), "a worker extension class"),
    ]
    refused = [what for bad, what in problems if bad]
    if in_engine:
        refused += engine_config_problems(vllm_config)
    if refused:
        raise GuardrailRefused(
            f"dsg guardrail: untested with {', '.join(refused)}; refusing to serve rather than "
            "serve unguarded"
        )


def engine_config_problems(vllm_config: Any) -> list[str]:
    """What in this vLLM set-up would let a prompt reach the engine in parts."""
    scheduler = vllm_config.scheduler_config
    return [
        what
        for bad, what in [
            (
                vllm_config.cache_config.enable_prefix_caching,
                "prefix caching when deciding in the engine (--no-enable-prefix-caching)",
            ),
            (
                scheduler.enable_chunked_prefill,
                "chunked prefill when deciding in the engine (--no-enable-chunked-prefill)",
            ),
            (
                scheduler.long_prefill_token_threshold > 0,
                "a long-prefill token threshold when deciding in the engine",
            ),
            (
                vllm_config.device_config.device_type != "cpu",
                "deciding in the engine on a device other than the CPU",
            ),
        ]
        if bad
    ]
