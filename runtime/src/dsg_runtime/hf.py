"""The guardrail on a plain Hugging Face ``transformers`` causal LM, from a bundle.

TransformerLens ``blocks.L.hook_resid_post`` is the output of decoder layer ``L``
(``hidden_states[L + 1]``) and ``blocks.L.hook_resid_pre`` its input, so the guardrail is a forward
hook (or pre-hook) on that layer. A pre-hook on the decoder (the module that owns the layers)
captures each call's attention mask and KV-cache state, so rates count real tokens only and each
row's BOS is its first attended token, which is what left-padded batched generation needs.

The rule, in every generation mode: each row is decided on its whole prompt, exactly as one
unchunked prefill of that prompt alone decides it, and every later position (generated, drafted,
rerun without a cache) carries that decision. It is what the calibration measured (whole retain
sequences) and what the reference computes; it cannot flip halfway through an answer whose
earlier positions already sit clamped (or not) in the cache, and neither the model's own output
nor draft tokens can switch it. The layer hook sees forward passes, not prompts, so a wrapper on
the model's ``generate`` (:mod:`dsg_runtime.hf_generation`) reads from generate's own arguments
where the prompt ends; when the prompt will be prefilled in chunks, it is decided first by a forward
pass that stops at the guarded layer. Generation modes, options and caches whose passes the
guardrail cannot follow (contrastive search, DoLa, guidance, paged caches, a cache that already
holds positions, ...) are refused before any pass runs.

Outside ``generate``, a pass with no cached positions is a prompt, decided on everything it sees;
after it, only one-token steps on the cache it filled. Whether a call continues a sequence is read
from what cannot be renamed away: the cache object itself (found by type, whatever keyword
carries it), the length of a 2-D attention mask, and the guardrail's own record of the rows it
decided, the cache they were written to and how many positions it has seen. When these disagree,
or a continuation arrives for rows or a cache it did not see filled, the guardrail raises
:class:`GuardrailStateError` instead of letting a pass through unguarded.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsg_runtime.errors import UserError

if TYPE_CHECKING:
    import torch

    from dsg_runtime.bundle import Bundle
    from dsg_runtime.guardrail import Guardrail


class GuardrailStateError(UserError):
    """The guardrail cannot tell whether a forward pass starts or continues a sequence, so it
    refuses to run it rather than run it unguarded."""


def decoder_of(model: Any) -> Any:
    """The module that owns the decoder layer list (``model.model`` for Llama/Gemma-style LMs)."""
    for decoder in (getattr(model, "model", None), _get_decoder(model)):
        if decoder is not None and getattr(decoder, "layers", None) is not None:
            return decoder
    raise UserError(
        f"cannot find the decoder layers of a {type(model).__name__}; the guardrail supports "
        "causal LMs with model.model.layers (Gemma, Llama, Mistral, Qwen, ...)"
    )


def _get_decoder(model: Any) -> Any:
    return model.get_decoder() if hasattr(model, "get_decoder") else None


def decoder_layers(model: Any) -> Any:
    """The decoder layer list of a causal LM."""
    return decoder_of(model).layers


def _is_legacy_cache(value: Any) -> bool:
    """transformers 4.x's legacy cache: one ``(key, value)`` pair of ``[B, H, S, D]`` per layer."""
    import torch

    return (
        isinstance(value, tuple)
        and len(value) > 0
        and all(
            isinstance(pair, tuple | list)
            and len(pair) >= 2
            and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in pair[:2])
            for pair in value
        )
    )


def cache_length(value: Any) -> int | None:
    """Positions already held by a KV cache argument, or None when ``value`` is no cache."""
    from transformers.cache_utils import Cache

    if isinstance(value, Cache):
        return int(value.get_seq_length())
    if _is_legacy_cache(value):
        return int(value[0][0].shape[-2])
    return None


@dataclass(frozen=True)
class _Call:
    """What the decoder's pre-hook saw of one forward pass, before any layer ran."""

    mask: Any
    """The attention mask as passed: a 2-D tensor, a prepared 4-D one, a dict of them, or None."""
    cache_lengths: tuple[int, ...]
    """The length of every KV cache among the arguments (found by type, not by keyword)."""
    cache_start: int | None
    """``cache_position[0]`` when the call names it (transformers 4.x)."""
    caches: tuple[Any, ...] = ()
    """The transformers ``Cache`` objects among the arguments."""

    def past(self, length: int) -> int:
        """Positions of each row that came before this call's ``length`` new ones."""
        import torch

        readings: list[tuple[str, int]] = []
        if isinstance(self.mask, torch.Tensor) and self.mask.dim() == 2:
            readings.append(("attention mask", int(self.mask.shape[1]) - length))
        if self.cache_start is not None:
            readings.append(("cache position", self.cache_start))
        readings += [("KV cache", n) for n in self.cache_lengths]
        if any(n < 0 for _, n in readings):
            raise GuardrailStateError(
                f"the guardrail cannot place {length} new positions: {_describe(readings)}"
            )
        if len({n > 0 for _, n in readings}) > 1:
            raise GuardrailStateError(
                "the guardrail cannot tell whether this forward pass starts or continues a "
                f"sequence: {_describe(readings)}"
            )
        return readings[0][1] if readings else 0


def _describe(readings: list[tuple[str, int]]) -> str:
    return ", ".join(f"{source} says {n} positions came before" for source, n in readings)


class _PromptDecided(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by the guarded layer to stop the pre-decision pass once the prompt is decided."""


@dataclass(frozen=True)
class _Decision:
    """A prompt decided as a whole before generation runs it (chunked prefill)."""

    fired: torch.Tensor
    rates: torch.Tensor
    countable: torch.Tensor
    """Bool ``[B, P]``: the prompt positions whose hits counted (attended, not the BOS)."""

    def rows(self, batch: int) -> _Decision:
        """The decision for ``batch`` rows: generate repeats each prompt for its beams and
        returned sequences (``repeat_interleave``) before the first forward pass."""
        n = self.fired.shape[0]
        if batch == n:
            return self
        if batch % n:
            raise GuardrailStateError(
                f"the guardrail decided {n} prompts but a forward pass of generate has {batch} rows"
            )
        fired, rates, countable = (
            t.repeat_interleave(batch // n, dim=0) for t in (self.fired, self.rates, self.countable)
        )
        return _Decision(fired, rates, countable)


@dataclass
class _Generation:
    """What a ``generate`` call told the guardrail: the prompt's length, and its decision when
    the prompt is decided before generation runs it."""

    prompt_length: int
    decision: _Decision | None = None


@dataclass
class _Record:
    """The rows the guardrail decided on their prompt, and how far it has followed them."""

    fired: torch.Tensor
    rates: torch.Tensor
    seen: int
    cache: Callable[[], Any] | None = None
    """Returns the KV cache that holds these rows' positions (None: it holds none, so nothing
    can continue them); None itself when the decoder reports no cache object."""


def _removed_wrapper(generate: Any) -> bool:
    """A ``generate`` wrapper of a guardrail that was removed while another sat on top."""
    handle = getattr(generate, _GENERATE_MARK, None)
    return handle is not None and not handle._hooks


def _no_cache() -> None:
    return None


_GENERATE_MARK = "__dsg_guardrail__"


class GuardrailHandle:
    """The attached guardrail. ``fired`` and ``rates`` (per row) describe the last prompt;
    ``remove()`` takes every hook off the model again."""

    def __init__(self, model: Any, bundle: Bundle) -> None:
        self.bundle = bundle
        self.guardrail: Guardrail = bundle.guardrail()
        self._model = model
        decoder = decoder_of(model)
        self._signature = inspect.signature(decoder.forward)
        self._call: _Call | None = None
        self._record: _Record | None = None
        self._prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        self._generation: _Generation | None = None
        self._predeciding = False
        self._deciding_call = False
        layer = decoder.layers[bundle.hook_layer]
        self._hooks = [
            decoder.register_forward_pre_hook(self._capture, with_kwargs=True),
            decoder.register_forward_hook(self._after_decoder),
        ]
        if bundle.hook_point == "hook_resid_post":
            self._hooks.append(layer.register_forward_hook(self._post_hook))
        else:
            self._hooks.append(layer.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self._wrap_generate(model)

    @property
    def fired(self) -> torch.Tensor | None:
        """Per row of the last prompt: did the guardrail fire (None before any prompt)."""
        return None if self._record is None else self._record.fired

    @property
    def rates(self) -> torch.Tensor | None:
        """Per row of the last prompt: its hit rate (None before any prompt)."""
        return None if self._record is None else self._record.rates

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        wrapper = self._model.__dict__.get("generate")
        if getattr(wrapper, _GENERATE_MARK, None) is not self:
            return  # another guardrail's wrapper on top keeps this one, passing calls through
        previous = wrapper.__wrapped__
        while _removed_wrapper(previous):
            previous = previous.__wrapped__
        if hasattr(previous, _GENERATE_MARK):
            self._model.generate = previous
        else:
            del self._model.generate  # the class's own method again

    def __enter__(self) -> GuardrailHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextmanager
    def decided_on_prefix(
        self, decide_mask: torch.Tensor, apply_mask: torch.Tensor
    ) -> Iterator[None]:
        """Forward passes inside score a prompt and its continuation at once (log-likelihood
        requests): each row is decided on ``decide_mask`` (its prompt) and the decision applies
        to all of ``apply_mask``, as if the continuation had been generated. Both are ``[B, T]``
        for the whole call; a call of another shape, or one that continues a cache, is refused.
        """
        self._prefix = (decide_mask.bool(), apply_mask.bool())
        try:
            yield
        finally:
            self._prefix = None

    # ------------------------------------------------------------------ generate

    def _wrap_generate(self, model: Any) -> None:
        """Put :meth:`_generate` in front of the model's ``generate`` (an instance attribute,
        taken away by :meth:`remove`), so every generation tells the guardrail its prompt."""
        current = getattr(model, "generate", None)
        if current is None:
            return
        if "generate" in model.__dict__ and not hasattr(current, _GENERATE_MARK):
            raise UserError(
                "the model's generate was replaced by other code (custom_generate); the "
                "guardrail supports transformers' own generate only"
            )

        @functools.wraps(current)
        def generate(*args: Any, **kwargs: Any) -> Any:
            if not self._hooks:  # removed while another guardrail's wrapper sits on top
                return current(*args, **kwargs)
            return self._generate(current, args, kwargs)

        setattr(generate, _GENERATE_MARK, self)
        model.generate = generate

    def _generate(self, generate: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One ``generate`` call: a fresh record, the prompt noted (and decided first when
        generation will run it in pieces), the modes the guardrail cannot follow refused."""
        import torch

        from dsg_runtime.hf_generation import generation_plan

        if self._generation is not None:
            raise GuardrailStateError(
                "generate was called again while a generation of this guarded model was "
                "running (the model is its own assistant?); use an unguarded assistant model"
            )
        plan = generation_plan(self._model, args, kwargs)
        self._record = None
        generation = _Generation(plan.prompt_length)
        if plan.chunked:
            with torch.no_grad():
                generation.decision = self._decide_prompt(plan.forward_inputs)
        self._generation = generation
        try:
            return generate(*args, **kwargs)
        finally:
            self._generation = None

    def _decide_prompt(self, inputs: dict[str, Any]) -> _Decision:
        """Decide the whole prompt in one forward pass that stops after the guarded layer."""
        self._predeciding = True
        try:
            self._model(**inputs, use_cache=False)
        except _PromptDecided as decided:
            (decision,) = decided.args
            return decision  # type: ignore[no-any-return]
        finally:
            self._predeciding = False
        raise GuardrailStateError("the guarded layer did not run on the prompt")

    # ------------------------------------------------------------------ hooks

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from transformers.cache_utils import Cache

        bound = dict(self._signature.bind_partial(*args, **kwargs).arguments)
        bound.update(bound.pop("kwargs", None) or {})
        lengths = (cache_length(value) for value in bound.values())
        cache_position = bound.get("cache_position")
        self._deciding_call = False
        self._call = _Call(
            mask=bound.get("attention_mask"),
            cache_lengths=tuple(n for n in lengths if n is not None),
            cache_start=(
                int(cache_position.reshape(-1)[0])
                if cache_position is not None and cache_position.numel()
                else None
            ),
            caches=tuple(v for v in bound.values() if isinstance(v, Cache)),
        )

    def _after_decoder(self, module: Any, args: Any, output: Any) -> None:
        """After a pass that decided a prompt: note the KV cache that now holds its rows."""
        if not self._deciding_call or self._record is None:
            return
        self._deciding_call = False
        self._record.cache = _cache_tracker(output)

    def _take_call(self) -> _Call:
        call, self._call = self._call, None
        if call is None:
            raise GuardrailStateError(
                "the guarded layer ran outside a forward pass of the decoder the guardrail was "
                "attached to, so its attention mask and cache are unknown"
            )
        return call

    def _apply(self, hidden: torch.Tensor) -> torch.Tensor:
        call = self._take_call()
        batch, length = hidden.shape[:2]
        past = call.past(length)
        x = hidden.float()  # gate and clamp in float32, as the reference ran
        if self._predeciding:
            raise _PromptDecided(self._decision_of(x, call))
        if self._generation is not None:
            out = self._apply_in_generation(x, call, past, self._generation)
        elif self._prefix is not None:
            out = self._apply_prefix(x, past, *self._prefix)
        elif past == 0:
            out = self.guardrail(x, _prompt_mask(call.mask, batch, length, hidden.device))
            self._new_record(length)
        else:
            if length != 1:
                raise GuardrailStateError(
                    f"a forward pass outside generate adds {length} positions to a KV cache: "
                    "the guardrail cannot tell more prompt from generated tokens; use "
                    "generate, or pass the whole prompt in one pass and then one token a step"
                )
            record = self._continued(batch, past, call)
            out = self.guardrail.continue_rows(
                x, _new_positions_mask(call.mask, batch, length, hidden.device), record.fired
            )
            record.seen = past + length
        return hidden if out is x else out.to(hidden.dtype)

    def _decision_of(self, x: torch.Tensor, call: _Call) -> _Decision:
        from dsg_runtime.guardrail import countable_positions

        batch, length = x.shape[:2]
        mask = _prompt_mask(call.mask, batch, length, x.device)
        self.guardrail.decide_prompt(x, mask)
        fired, rates = self.guardrail.fired, self.guardrail.rates
        if fired is None or rates is None:
            raise GuardrailStateError("the guardrail decided no rows for this prompt")
        return _Decision(fired, rates, countable_positions(mask))

    def _new_record(self, seen: int) -> _Record:
        """Record the rows the guardrail just decided; the decoder's output names their cache."""
        fired, rates = self.guardrail.fired, self.guardrail.rates
        if fired is None or rates is None:
            raise GuardrailStateError("the guardrail decided no rows for this prompt")
        self._record = _Record(fired, rates, seen)
        self._deciding_call = True
        return self._record

    def _apply_in_generation(
        self, x: torch.Tensor, call: _Call, past: int, generation: _Generation
    ) -> torch.Tensor:
        """A forward pass of ``generate``: its positions before the prompt's end are the prompt,
        decided on the whole prompt at once; those after carry that decision."""
        import torch

        batch, length = x.shape[:2]
        end = generation.prompt_length
        if self._prefix is not None:
            raise GuardrailStateError("decided_on_prefix does not apply inside generate")
        if past == 0 and length >= end:  # the whole prompt (and draft tokens, or generated ones)
            full = _prompt_mask(call.mask, batch, length, x.device)
            prompt = full & (torch.arange(length, device=x.device) < end)
            out = self.guardrail.decide_on_prefix(x, prompt, full)
            self._new_record(length)
            return out
        decision = None if generation.decision is None else generation.decision.rows(batch)
        if past == 0:
            if decision is None:
                raise GuardrailStateError(
                    f"generate ran the first {length} of the prompt's {end} positions alone "
                    "and the guardrail was not told the prompt is processed in pieces"
                )
            record = _Record(decision.fired, decision.rates, 0)
            self._record = record
            self._deciding_call = True
        else:
            record = self._continued(batch, past, call)
        new = _new_positions_mask(call.mask, batch, length, x.device)
        if past >= end:
            out = self.guardrail.continue_rows(x, new, record.fired)
        elif decision is None:
            raise GuardrailStateError(
                f"generate continued a prompt of {end} positions after {past}, but the "
                "guardrail has no decision on the whole prompt"
            )
        else:
            decided = decision.countable[:, past : past + length]
            pad = torch.zeros(batch, length - decided.shape[1], dtype=torch.bool, device=x.device)
            decided = torch.cat([decided.to(x.device), pad], dim=1)
            later = new & (torch.arange(past, past + length, device=x.device) >= end)
            out = self.guardrail.apply_decision(x, decided, later, record.fired)
        record.seen = past + length
        return out

    def _apply_prefix(
        self, x: torch.Tensor, past: int, decide: torch.Tensor, apply: torch.Tensor
    ) -> torch.Tensor:
        """One pass over prompts and continuations, decided on the prompts (see
        :meth:`decided_on_prefix`)."""
        if past != 0 or decide.shape != x.shape[:2] or apply.shape != x.shape[:2]:
            raise GuardrailStateError(
                f"the guardrail was given prompt masks of shape {tuple(decide.shape)} for a "
                f"call of shape {tuple(x.shape[:2])} after {past} cached positions"
            )
        out = self.guardrail.decide_on_prefix(x, decide, apply)
        self._new_record(x.shape[1])
        return out

    def _continued(self, batch: int, past: int, call: _Call) -> _Record:
        """The record of the rows a continuation step extends; raises when there is none, or
        when the step's cache is not the one those rows were written to."""
        record = self._record
        if record is None or record.fired.shape[0] != batch:
            raise GuardrailStateError(
                f"the guardrail saw a continuation step ({past} positions already cached) for "
                "rows whose prompt it did not decide; attach it before the prompt is processed"
            )
        if record.cache is not None:
            expected = record.cache()
            if expected is None or not any(cache is expected for cache in call.caches):
                raise GuardrailStateError(
                    f"the guardrail was given a KV cache ({past} positions) that it did not "
                    "see filled: its positions may have run unguarded; generate from the "
                    "whole prompt instead"
                )
        if past > record.seen:
            raise GuardrailStateError(
                f"the guardrail followed these rows for {record.seen} positions but the cache "
                f"holds {past}: positions ran unguarded; attach it before the prompt is processed"
            )
        return record

    def _post_hook(self, module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # transformers 4.x decoder layers return a tuple
            return (self._apply(output[0]), *output[1:])
        return self._apply(output)

    def _pre_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (self._apply(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._apply(kwargs["hidden_states"])}


def _cache_tracker(output: Any) -> Callable[[], Any] | None:
    """How to find the KV cache a decoder's output says holds the call's positions: a weak
    reference to it; :func:`_no_cache` when a transformers output carries none (nothing may
    continue it); None when the decoder reports nothing (bare tensors), so lengths alone are
    checked."""
    from transformers.cache_utils import Cache
    from transformers.utils import ModelOutput

    if isinstance(output, ModelOutput):
        for value in output.values():
            if isinstance(value, Cache):
                return weakref.ref(value)
        return _no_cache
    return None


def _prompt_mask(mask: Any, batch: int, length: int, device: Any) -> torch.Tensor:
    """The 2-D padding mask ``[B, T]`` of a prompt, from whichever mask the call carried."""
    import torch

    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.to(device=device, dtype=torch.bool)
    return _attended_keys(mask, batch, length).to(device)


def _new_positions_mask(mask: Any, batch: int, length: int, device: Any) -> torch.Tensor:
    """The attention mask of a continuation's new positions: the tail of a 2-D mask; generated
    positions are always attended when the call carries a prepared mask instead."""
    import torch

    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask[:, -length:].to(device=device, dtype=torch.bool)
    return torch.ones(batch, length, dtype=torch.bool, device=device)


def _attended_keys(mask: Any, batch: int, length: int) -> torch.Tensor:
    """The 2-D padding mask of a prompt, read from a prepared 4-D mask ``[B, 1, Q, K]`` (static
    and compiled caches pass one; transformers 5 a dict per attention type): the keys the
    prompt's last position may attend under full attention."""
    import torch

    if isinstance(mask, dict):
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if mask is None:  # left out because nothing is masked
        return torch.ones(batch, length, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise GuardrailStateError(
            "the guardrail cannot read this call's attention mask; pass a 2-D attention_mask"
        )
    last = mask[:, 0, -1, :length]
    if last.dtype == torch.bool:
        return last
    return last > torch.finfo(last.dtype).min / 2


def attach(model: Any, bundle: Bundle) -> GuardrailHandle:
    """Put the bundle's guardrail on a transformers causal LM; returns the handle to remove it."""
    hidden = getattr(model.config, "hidden_size", None)
    if hidden is not None and hidden != bundle.d_model:
        raise UserError(
            f"the bundle reads vectors of size {bundle.d_model} but the model's hidden size is "
            f"{hidden}; use the bundle with the model its SAE was trained on"
        )
    n_layers = len(decoder_layers(model))
    if bundle.hook_layer >= n_layers:
        raise UserError(
            f"the bundle hooks layer {bundle.hook_layer} but the model has {n_layers} layers"
        )
    return GuardrailHandle(model, bundle)
