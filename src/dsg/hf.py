"""The guardrail on a plain Hugging Face ``transformers`` causal LM, from a bundle.

TransformerLens ``blocks.L.hook_resid_post`` is the output of decoder layer ``L``
(``hidden_states[L + 1]``) and ``blocks.L.hook_resid_pre`` its input, so the guardrail is a forward
hook (or pre-hook) on that layer. A pre-hook on the decoder (the module that owns the layers)
captures each call's attention mask and KV-cache state, so rates count real tokens only and each
row's BOS is its first attended token, which is what left-padded batched generation needs.

Generation with a KV cache: the decision is made once, on the prompt (the prefill pass), and
carried through the decode steps; in a firing row every new position where a selected feature is
active is clamped too. A prompt-level decision is what the calibration measured (whole retain
sequences) and what the reference computes, it cannot flip halfway through an answer whose earlier
positions already sit unclamped (or clamped) in the cache, and it keeps greedy decoding
deterministic. A one-token step has no meaningful rate of its own. A forward pass without a
cache (``use_cache=False``, or a scoring pass) decides afresh on everything it sees.

Whether a call continues a sequence is read from what cannot be renamed away: the cache object
itself (found by type, whatever keyword carries it), the length of a 2-D attention mask, and the
guardrail's own record of the rows it decided and how many positions of each it has seen. When
these disagree, or a continuation arrives for rows it never decided, the guardrail raises
:class:`GuardrailStateError` instead of letting a step through unguarded.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsg.errors import UserError

if TYPE_CHECKING:
    import torch

    from dsg.bundle import Bundle
    from dsg.guardrail import Guardrail


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


def _cache_length(value: Any) -> int | None:
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


@dataclass
class _Record:
    """The rows the guardrail decided on their prompt, and how far it has followed them."""

    fired: torch.Tensor
    rates: torch.Tensor
    seen: int


class GuardrailHandle:
    """The attached guardrail. ``fired`` and ``rates`` (per row) describe the last prompt;
    ``remove()`` takes every hook off the model again."""

    def __init__(self, model: Any, bundle: Bundle) -> None:
        self.bundle = bundle
        self.guardrail: Guardrail = bundle.guardrail()
        decoder = decoder_of(model)
        self._signature = inspect.signature(decoder.forward)
        self._call: _Call | None = None
        self._record: _Record | None = None
        self._prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        layer = decoder.layers[bundle.hook_layer]
        self._hooks = [decoder.register_forward_pre_hook(self._capture, with_kwargs=True)]
        if bundle.hook_point == "hook_resid_post":
            self._hooks.append(layer.register_forward_hook(self._post_hook))
        else:
            self._hooks.append(layer.register_forward_pre_hook(self._pre_hook, with_kwargs=True))

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

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        bound = dict(self._signature.bind_partial(*args, **kwargs).arguments)
        bound.update(bound.pop("kwargs", None) or {})
        lengths = (_cache_length(value) for value in bound.values())
        cache_position = bound.get("cache_position")
        self._call = _Call(
            mask=bound.get("attention_mask"),
            cache_lengths=tuple(n for n in lengths if n is not None),
            cache_start=(
                int(cache_position.reshape(-1)[0])
                if cache_position is not None and cache_position.numel()
                else None
            ),
        )

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
        if self._prefix is not None:
            out = self._apply_prefix(x, past, *self._prefix)
        elif past == 0:
            out = self.guardrail(x, _prompt_mask(call.mask, batch, length, hidden.device))
            fired, rates = self.guardrail.fired, self.guardrail.rates
            if fired is None or rates is None:
                raise GuardrailStateError("the guardrail decided no rows for this prompt")
            self._record = _Record(fired, rates, length)
        else:
            record = self._continued(batch, past)
            out = self.guardrail.continue_rows(
                x, _new_positions_mask(call.mask, batch, length, hidden.device), record.fired
            )
            record.seen = past + length
        return hidden if out is x else out.to(hidden.dtype)

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
        fired, rates = self.guardrail.fired, self.guardrail.rates
        if fired is None or rates is None:
            raise GuardrailStateError("the guardrail decided no rows for these prompts")
        self._record = _Record(fired, rates, x.shape[1])
        return out

    def _continued(self, batch: int, past: int) -> _Record:
        """The record of the rows a continuation step extends; raises when there is none."""
        record = self._record
        if record is None or record.fired.shape[0] != batch:
            raise GuardrailStateError(
                f"the guardrail saw a continuation step ({past} positions already cached) for "
                "rows whose prompt it did not decide; attach it before the prompt is processed"
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
