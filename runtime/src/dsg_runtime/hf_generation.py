"""What a ``generate`` call means for the guardrail: the prompt it starts from, whether it will
run that prompt in pieces, and the generation modes the guardrail cannot follow (refused).

The guardrail decides on the whole prompt. Its layer hook sees forward passes, not prompts:
a pass that holds part of the prompt (chunked prefill) or the prompt plus draft tokens
(assisted decoding) looks like any other. ``generate``'s own arguments say where the prompt
ends, so :mod:`dsg_runtime.hf` reads them here before generation starts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, NoReturn

from dsg_runtime.errors import GuardrailStateError
from dsg_runtime.hf_cache import cache_length

SUPPORTED_MODES = frozenset(
    {"greedy_search", "sample", "beam_search", "beam_sample", "assisted_generation"}
)
"""``GenerationMode`` values whose forward passes the guardrail follows: one prefill (whole,
in chunks, or with draft tokens after the prompt), then steps that extend one KV cache."""

REFUSED_MODES = {
    "contrastive_search": "it reruns the model on candidate tokens outside the KV cache",
    "dola_generation": "it reads and mixes early layers outside the guarded path",
    "constrained_beam_search": "it runs as downloaded hub code",
    "group_beam_search": "it runs as downloaded hub code",
}
"""Modes refused with the reason (transformers 5 runs all four as hub code)."""


@dataclass(frozen=True)
class GenerationPlan:
    """A ``generate`` call as the guardrail sees it before it runs."""

    prompt_length: int
    chunked: bool
    """Generation may run the prompt in pieces (``prefill_chunk_size`` is set somewhere)."""
    forward_inputs: dict[str, Any] = field(default_factory=dict)
    """The prompt as one forward pass's arguments (for deciding it before it is chunked)."""
    prompt: Any = None
    """The tensor generate starts from (to tell its passes from others run meanwhile)."""
    prompt_name: str = "input_ids"
    """``input_ids`` or ``inputs_embeds``."""


def generation_plan(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> GenerationPlan:
    """Read ``model.generate(*args, **kwargs)``; raise :class:`GuardrailStateError` for what
    the guardrail cannot follow."""
    signature = inspect.signature(type(model).generate)
    bound = signature.bind(model, *args, **kwargs).arguments
    (var_keyword,) = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    extra = dict(bound.pop(var_keyword, {}))
    if bound.get("custom_generate") is not None:
        refuse("custom_generate runs code the guardrail cannot follow")
    for name in ("negative_prompt_ids", "negative_prompt_attention_mask"):
        if bound.get(name) is not None:
            refuse(f"{name} (classifier-free guidance) runs the model on a second prompt")
    config, mode = _generation_mode(model, bound, extra)
    if mode in REFUSED_MODES:
        refuse(f"{mode.replace('_', ' ')}: {REFUSED_MODES[mode]}")
    if mode not in SUPPORTED_MODES:
        refuse(f"the generation mode {mode!r}, which it has not been checked against")
    if config.dola_layers is not None:  # beam search with dola_layers keeps its beam mode
        refuse("DoLa (dola_layers): it reads and mixes early layers outside the guarded path")
    if config.guidance_scale not in (None, 1):
        refuse("classifier-free guidance (guidance_scale) runs the model on a second prompt")
    if getattr(config, "assistant_early_exit", None) is not None:
        refuse("assistant_early_exit drafts with the guarded model's own early layers")
    if getattr(config, "use_mtp", None):
        refuse("use_mtp drafts with the model's multi-token-prediction layers")
    if config.cache_implementation == "paged":
        refuse('cache_implementation="paged" (continuous batching) schedules passes itself')
    _refuse_filled_caches(bound, extra)
    prompt_name, prompt = _prompt(bound, extra)
    chunked = getattr(config, "prefill_chunk_size", None) is not None
    inputs: dict[str, Any] = {}
    if chunked:
        mask = extra.get("attention_mask")
        if prompt_name != "input_ids" or mask is None or mask.dim() != 2:
            refuse(
                "chunked prefill (prefill_chunk_size) needs input_ids and their 2-D "
                "attention_mask, to decide on the whole prompt first"
            )
        positions = extra.get("position_ids")
        if positions is None:  # as generate numbers a left-padded prompt
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": prompt, "attention_mask": mask, "position_ids": positions}
    return GenerationPlan(int(prompt.shape[1]), chunked, inputs, prompt, prompt_name)


def refuse(what: str) -> NoReturn:
    raise GuardrailStateError(f"the guardrail cannot guard generate with {what}")


def _generation_mode(model: Any, bound: dict[str, Any], extra: dict[str, Any]) -> tuple[Any, str]:
    """The generation config generate will use and its mode, read through transformers' own
    (private) methods, as generate itself reads them. Their signatures differ between releases
    (4.45 takes no ``use_model_defaults``; some return the config alone): the parameters are
    matched by name, and a transformers whose methods cannot be read so is refused, not guessed
    at."""
    import transformers

    try:
        prepare = model._prepare_generation_config
        options = {
            name: bound[name]
            for name in inspect.signature(prepare).parameters
            if name in bound and name != "generation_config"
        }
        prepared = prepare(bound.get("generation_config"), **options, **extra)
        config = prepared[0] if isinstance(prepared, tuple) else prepared
        # an assistant model turns greedy or sample search into assisted generation, which the
        # guardrail follows alike: the mode without it is enough
        mode = config.get_generation_mode()
    except (AttributeError, TypeError) as exc:
        refuse(
            f"transformers {transformers.__version__}, whose generation settings it cannot "
            f"read ({type(exc).__name__}: {exc})"
        )
    return config, str(getattr(mode, "value", mode))


def _refuse_filled_caches(bound: dict[str, Any], extra: dict[str, Any]) -> None:
    for name, value in {**bound, **extra}.items():
        n = cache_length(value)
        if n:
            refuse(
                f"a KV cache ({name}) that already holds {n} positions: the prompt is decided "
                "as a whole and positions the guardrail did not process cannot be vouched for; "
                "pass the whole prompt and no cache"
            )


def _prompt(bound: dict[str, Any], extra: dict[str, Any]) -> tuple[str, Any]:
    """The tensor generate starts from and its name (``input_ids`` or ``inputs_embeds``)."""
    import torch

    if extra.get("inputs_embeds") is not None:
        return "inputs_embeds", extra["inputs_embeds"]
    for value in (bound.get("inputs"), extra.get("input_ids")):
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            return "input_ids", value
    refuse("no prompt: pass input_ids (a [batch, length] tensor)")
