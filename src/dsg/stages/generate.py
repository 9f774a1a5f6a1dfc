"""Guarded generation: a transformers model with a guardrail bundle attached, greedy decoding,
tokens streamed as they come.

Greedy decoding keeps a guarded completion reproducible, so the guarded and unguarded texts
differ only where the guardrail acted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.config.settings import DTYPES
from dsg.core.errors import UserError

if TYPE_CHECKING:
    from dsg.bundle import Bundle


@dataclass(frozen=True)
class Completion:
    """A completion and, when guarded, the prompt's decision and hit rate."""

    text: str
    fired: bool | None = None
    rate: float | None = None


# With --bundle the guardrail is the bundle's; of the settings, only these still choose anything.
SETTINGS_WITH_A_BUNDLE = ("model", "device", "dtype")


def refuse_options_a_bundle_fixes(settings: dict[str, Any], config: Path | None) -> None:
    """A UserError naming the options that would do nothing beside a bundle (its features,
    threshold and multiplier are fixed, and no stage runs), rather than ignoring them."""
    from dsg.api.plugins import registry
    from dsg.config.settings import with_plugins

    known = with_plugins(registry().settings)
    ignored = [
        known[name].option
        for name, value in settings.items()
        if value not in (None, [], ()) and name not in SETTINGS_WITH_A_BUNDLE
    ]
    ignored += ["--config"] if config is not None else []
    if ignored:
        raise UserError(
            f"{', '.join(ignored)} would do nothing with --bundle: the bundle fixes the "
            "guardrail, and only --model, --device and --dtype apply. Leave them off, or export "
            "another bundle with `dsg muse-export` for other values"
        )


def _same_model(a: str, b: str) -> bool:
    """Whether two references name one model: the same folder, or the same hub id."""
    if Path(a).is_dir() and Path(b).is_dir():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def bundle_model(given: str | None, bundle: Bundle) -> tuple[str | None, str]:
    """The model to run ``bundle`` on and where that choice came from: ``--model`` when given,
    else the bundle's ``base_model.hf``. The bundle's field is a hint a bundle's author wrote,
    so it is named to the user whenever it is used or overridden."""
    hint = bundle.base_model.get("hf")
    if given:
        differs = bool(hint) and not _same_model(given, str(hint))
        return given, f"--model; the bundle's base_model.hf is {hint}" if differs else "--model"
    spec = bundle.base_model.get("spec")
    if hint and Path(str(hint)).is_absolute() and not Path(str(hint)).exists() and spec:
        # a folder of another machine (a converted GGUF's cache): the model's name may make it here
        made = transformers_reference(str(spec))
        if made != spec:
            return made, f"the bundle's base_model.spec {spec} ({hint} is not on this machine)"
    if hint:
        return str(hint), "the bundle's base_model.hf; pass --model to run another"
    return None, ""


def say(line: str) -> None:
    """An informational line on stderr, as dsg's progress lines (stdout holds the completion)."""
    from dsg.engine.session import stderr

    stderr.print(f"[dsg] {line}", highlight=False, markup=False, soft_wrap=True)


def transformers_reference(reference: str) -> str:
    """The folder a model loader makes for a name it owns (``smollm2-135m-instruct``: the
    converted GGUF), else ``reference`` unchanged (a folder or a hub id)."""
    from dsg.api.plugins import registry

    return registry().transformers_reference(reference)


GENERATE_FIX = "Pass --model with a local model directory or a hub id that is cached"


def load_model(reference: str, *, device: str, dtype: str) -> tuple[Any, Any]:
    """A transformers causal LM and its tokenizer, through the engine's one loader."""
    import torch

    from dsg.engine.loader import load_causal_lm, load_tokenizer

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    tokenizer = load_tokenizer(reference, fix=GENERATE_FIX)
    model = load_causal_lm(reference, device=device, dtype=getattr(torch, dtype), fix=GENERATE_FIX)
    return model, tokenizer


def encode(tokenizer: Any, prompt: str, *, chat: bool) -> dict[str, Any]:
    """Token ids and mask for one prompt, in the tokenizer's chat format when asked and known."""
    if chat and getattr(tokenizer, "chat_template", None):
        return dict(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        )
    return dict(tokenizer(prompt, return_tensors="pt"))


def complete(
    model: Any, tokenizer: Any, inputs: dict[str, Any], *, max_new_tokens: int, stream: bool
) -> str:
    """Greedy completion of ``inputs``; printed token by token to stdout when ``stream``."""
    import torch
    from transformers import TextStreamer

    if max_new_tokens <= 0:
        raise UserError(f"max new tokens must be positive, got {max_new_tokens}")
    check_fits(model, inputs["input_ids"].shape[1], max_new_tokens)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            streamer=streamer if stream else None,
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def context_length(model: Any) -> int | None:
    """The most positions the model was built for (``max_position_embeddings``), if it says."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "max_position_embeddings", None)
    return int(n) if n else None


def check_fits(model: Any, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse, before generating, a completion that would run past the model's context: the
    positions beyond it were never trained, and generating them can take minutes."""
    n_ctx = context_length(model)
    if n_ctx is None or prompt_tokens + max_new_tokens <= n_ctx:
        return
    fix = (
        f"pass --max-new-tokens {n_ctx - prompt_tokens} or less"
        if prompt_tokens < n_ctx
        else "shorten the prompt"
    )
    raise UserError(
        f"the prompt ({prompt_tokens} tokens) plus --max-new-tokens {max_new_tokens} is longer "
        f"than the model's context of {n_ctx} tokens; {fix}"
    )


def completion(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    bundle: Bundle | None,
    max_new_tokens: int,
    chat: bool = True,
    stream: bool = False,
) -> Completion:
    """The completion of ``prompt``: guarded by ``bundle`` (with the prompt's decision) or, with
    no bundle, the base model's, for comparison."""
    from dsg_runtime.hf import GuardrailStateError, attach

    inputs = encode(tokenizer, prompt, chat=chat)
    if bundle is None:
        return Completion(
            complete(model, tokenizer, inputs, max_new_tokens=max_new_tokens, stream=stream)
        )
    with attach(model, bundle) as handle:
        text = complete(model, tokenizer, inputs, max_new_tokens=max_new_tokens, stream=stream)
        fired, rates = handle.fired, handle.rates
    if fired is None or rates is None:
        raise GuardrailStateError("the guardrail never saw the prompt; nothing was guarded")
    return Completion(text, bool(fired[0]), float(rates[0]))


def describe(completion: Completion, bundle: Bundle) -> str:
    """One line: did the guardrail fire on the prompt, and why, in its strategy's words when it
    has them (a plugin's strategy need not)."""
    from dsg_runtime.protocols import DescribedStrategy

    strategy = bundle.gate_strategy
    fired, rate, threshold = bool(completion.fired), completion.rate or 0.0, bundle.threshold
    if isinstance(strategy, DescribedStrategy):
        return strategy.describe_decision(fired, rate, threshold, bundle.strategy_params)
    verdict = "fired" if fired else "did not fire"
    against = "" if threshold is None else f" against threshold {threshold:.4f}"
    return f"guardrail {verdict} ({bundle.strategy}: prompt hit rate {rate:.4f}{against})"
