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
:class:`GuardrailStateError` instead of letting a pass through unguarded. What a prompt pass
attends is read by :mod:`dsg_runtime.hf_masks` (packed rows are decided per sequence; masks it
cannot read are refused).

All of this state belongs to a call, not to the handle: each thread has its own, and a pass run
while a ``generate`` runs (from a logits processor, say) counts as that generation's only when
its input starts with generate's prompt or it continues generate's cache; otherwise it is
decided on its own input. A deep copy of a guarded model is guarded on its own weights, and a
second guardrail on one model needs ``stack=True``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dsg_runtime.decoder import decoder_layers, decoder_of
from dsg_runtime.errors import GuardrailStateError, UserError
from dsg_runtime.hf_cache import cache_length, cache_lengths
from dsg_runtime.hf_generation import generation_plan
from dsg_runtime.hf_masks import decide_segments, new_positions, read_prompt, refuse_masked_out

if TYPE_CHECKING:
    from dsg_runtime.bundle import Bundle
    from dsg_runtime.guardrail import Guardrail

__all__ = [
    "GuardrailHandle",
    "GuardrailStateError",
    "attach",
    "cache_length",
    "decoder_layers",
    "decoder_of",
    "guardrails_on",
]


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
    input_ids: Any = None
    inputs_embeds: Any = None
    position_ids: Any = None

    def past(self, length: int) -> int:
        """Positions of each row that came before this call's ``length`` new ones."""
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
    """What a ``generate`` call told the guardrail: its prompt (to recognise its own passes
    among others run while it runs), and the prompt's decision when the prompt is decided before
    generation runs it."""

    prompt_length: int
    prompt: Any = None
    """The ``input_ids`` (or ``inputs_embeds``) generate starts from, before any expansion."""
    prompt_name: str = "input_ids"
    decision: _Decision | None = None
    record: _Record | None = None
    """The rows its first pass decided (what ``fired`` reports once it returns)."""

    def starts(self, call: _Call, batch: int) -> bool:
        """Whether a pass with no cached positions is one of this generation's: its first
        positions are the prompt (repeated for beams and returned sequences). A pass whose input
        is of the other kind (embeddings in a generation from ids, or ids in one from
        embeddings) cannot be compared, and is refused."""
        given = call.input_ids if self.prompt_name == "input_ids" else call.inputs_embeds
        if given is None:
            raise GuardrailStateError(
                f"a pass without {self.prompt_name} ran inside a generate that started from "
                f"{self.prompt_name}: the guardrail cannot tell whether it continues generate's "
                "prompt; run it outside generate"
            )
        prompt = self.prompt
        if batch % prompt.shape[0]:
            return False
        n = min(prompt.shape[1], given.shape[1])
        expected = prompt[:, :n].to(given.device).repeat_interleave(batch // prompt.shape[0], 0)
        return bool(torch.equal(given[:, :n], expected))


@dataclass
class _Record:
    """The rows the guardrail decided on their prompt, and how far it has followed them."""

    fired: torch.Tensor
    rates: torch.Tensor
    seen: int
    cache: Callable[[], Any] | None = None
    """Returns the KV cache that holds these rows' positions (None: it holds none, so nothing
    can continue them); None itself when the decoder reports no cache object."""
    generation: _Generation | None = None
    """The ``generate`` call whose pass decided these rows (None: a pass outside generate)."""
    packed: bool = False
    """The rows packed several sequences, each decided alone: nothing may continue them."""
    unchanged_by_steps: bool | None = None
    """Whether continuing these rows changes nothing (None: not read yet)."""

    def holds(self, call: _Call) -> bool:
        """Whether ``call`` continues the cache these rows were written to."""
        cache = None if self.cache is None else self.cache()
        return cache is not None and any(c is cache for c in call.caches)


class _State(threading.local):
    """A thread's view of the guardrail: the pass in flight, the rows it decided, the
    ``generate`` it is inside. Each thread has its own, so threads sharing one guarded model
    never read each other's calls, and a pass run inside a generation (a logits processor's) is
    told apart from the generation's own by its input and its cache."""

    def __init__(self, guardrail: Guardrail) -> None:
        self.guardrail = copy.copy(guardrail)  # its own fired/rates; the columns are shared
        self.call: _Call | None = None
        self.records: list[_Record] = []
        self.last: _Record | None = None
        self.pending: _Record | None = None
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        self.generation: _Generation | None = None
        self.predeciding = False

    def add(self, record: _Record) -> _Record:
        """Note a newly decided record; records whose cache is gone can continue nothing."""
        self.records = [r for r in self.records if r.cache is not None and r.cache() is not None]
        self.records.append(record)
        self.last = self.pending = record
        return record

    def continued(self, call: _Call) -> _Record | None:
        """The record a continuation extends: the newest written to the call's cache, else the
        newest of all (which the checks then refuse unless its decoder reports no cache)."""
        for record in reversed(self.records):
            if record.holds(call):
                return record
        return self.records[-1] if self.records else None


def _removed_wrapper(generate: Any) -> bool:
    """A ``generate`` wrapper of a guardrail that was removed while another sat on top."""
    handle = getattr(generate, _GENERATE_MARK, None)
    return handle is not None and not handle._hooks


def _no_cache() -> None:
    return None


_GENERATE_MARK = "__dsg_guardrail__"


class _GuardedGenerate:
    """The model's ``generate`` with the guardrail told about each call (an instance attribute
    of the model). An object rather than a closure so that ``copy.deepcopy`` of the model gives
    a wrapper of the copy's guardrail around the copy's own ``generate``."""

    def __init__(self, handle: GuardrailHandle, current: Any) -> None:
        functools.update_wrapper(self, current)
        self.handle = handle
        self.current = current

    @property
    def __dsg_guardrail__(self) -> GuardrailHandle:
        return self.handle

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.handle._hooks:  # removed while another guardrail's wrapper sits on top
            return self.current(*args, **kwargs)
        return self.handle._generate(self.current, args, kwargs)


class GuardrailHandle:
    """The attached guardrail. ``fired`` and ``rates`` (per row) describe the calling thread's
    last prompt; ``remove()`` takes every hook off the model again."""

    def __init__(self, model: Any, bundle: Bundle, binding_note: str | None = None) -> None:
        self.bundle = bundle
        self.guardrail: Guardrail = bundle.guardrail()
        self.binding_note = binding_note
        """None when the model matched the bundle's binding record; else what differed and that
        the caller overrode the check."""
        self._model = model
        decoder = decoder_of(model)
        self._positional = _positional_names(decoder.forward)
        self._pad_ids = _pad_ids(model)
        self._state = _State(self.guardrail)
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

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardrailHandle:
        """A copy of the guarded model is guarded on its own weights: its hooks and ``generate``
        wrapper (copied with the model) call this copy, which follows the copied model; no
        thread's state is carried over."""
        clone = GuardrailHandle.__new__(GuardrailHandle)
        memo[id(self)] = clone
        clone.bundle = self.bundle
        clone.guardrail = self.bundle.guardrail()
        clone.binding_note = self.binding_note
        clone._model = copy.deepcopy(self._model, memo)
        clone._positional = self._positional
        clone._pad_ids = self._pad_ids
        clone._state = _State(clone.guardrail)
        clone._hooks = copy.deepcopy(self._hooks, memo)
        return clone

    @property
    def fired(self) -> torch.Tensor | None:
        """Per row of the calling thread's last prompt: did the guardrail fire (None before
        any prompt). For a row that packs several sequences: did any of them fire."""
        last = self._state.last
        return None if last is None else last.fired

    @property
    def rates(self) -> torch.Tensor | None:
        """Per row of the calling thread's last prompt: its hit rate (None before any prompt).
        For a row that packs several sequences: the highest of theirs."""
        last = self._state.last
        return None if last is None else last.rates

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
        """Forward passes inside (in the calling thread) score a prompt and its continuation at
        once (log-likelihood requests): each row is decided on ``decide_mask`` (its prompt) and
        the decision applies to all of ``apply_mask``, as if the continuation had been
        generated. Both are ``[B, T]`` for the whole call; a call of another shape, or one that
        continues a cache, is refused.
        """
        state = self._state
        state.prefix = (decide_mask.bool(), apply_mask.bool())
        try:
            yield
        finally:
            state.prefix = None

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
        model.generate = _GuardedGenerate(self, current)

    def _generate(self, generate: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One ``generate`` call: a fresh record, the prompt noted (and decided first when
        generation will run it in pieces), the modes the guardrail cannot follow refused."""
        state = self._state
        if state.generation is not None:
            raise GuardrailStateError(
                "generate was called again while a generation of this guarded model was "
                "running (the model is its own assistant?); use an unguarded assistant model"
            )
        plan = generation_plan(self._model, args, kwargs)
        state.last = None
        generation = _Generation(plan.prompt_length, plan.prompt, plan.prompt_name)
        if plan.chunked:
            with torch.no_grad():
                generation.decision = self._decide_prompt(state, plan.forward_inputs)
        state.generation = generation
        try:
            return generate(*args, **kwargs)
        finally:
            state.generation = None
            if generation.record is not None:  # not a pass run meanwhile by other code
                state.last = generation.record

    def _decide_prompt(self, state: _State, inputs: dict[str, Any]) -> _Decision:
        """Decide the whole prompt in one forward pass that stops after the guarded layer."""
        state.predeciding = True
        try:
            self._model(**inputs, use_cache=False)
        except _PromptDecided as decided:
            (decision,) = decided.args
            return decision  # type: ignore[no-any-return]
        finally:
            state.predeciding = False
        raise GuardrailStateError("the guarded layer did not run on the prompt")

    # ------------------------------------------------------------------ hooks

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from transformers.cache_utils import Cache

        bound = {**dict(zip(self._positional, args, strict=False)), **kwargs}
        cache_position = bound.get("cache_position")
        state = self._state
        state.pending = None
        state.call = _Call(
            mask=bound.get("attention_mask"),
            cache_lengths=cache_lengths(bound.values()),
            cache_start=(
                int(cache_position.reshape(-1)[0])
                if cache_position is not None and cache_position.numel()
                else None
            ),
            caches=tuple(v for v in bound.values() if isinstance(v, Cache)),
            input_ids=bound.get("input_ids"),
            inputs_embeds=bound.get("inputs_embeds"),
            position_ids=bound.get("position_ids"),
        )

    def _after_decoder(self, module: Any, args: Any, output: Any) -> None:
        """After a pass that decided a prompt: note the KV cache that now holds its rows."""
        state = self._state
        record, state.pending = state.pending, None
        if record is not None:
            record.cache = _cache_tracker(output)

    def _take_call(self, state: _State) -> _Call:
        call, state.call = state.call, None
        if call is None:
            raise GuardrailStateError(
                "the guarded layer ran outside a forward pass of the decoder the guardrail was "
                "attached to, so its attention mask and cache are unknown"
            )
        return call

    def _apply(self, hidden: torch.Tensor) -> torch.Tensor:
        state = self._state
        call = self._take_call(state)
        batch, length = hidden.shape[:2]
        past = call.past(length)
        x = hidden.float()  # gate and clamp in float32, as the reference ran
        if state.predeciding:
            raise _PromptDecided(self._decision_of(state, x, call))
        generation = state.generation
        if generation is not None and self._belongs(state, generation, call, past, batch):
            out = self._apply_in_generation(state, x, call, past, generation)
        elif state.prefix is not None:
            out = self._apply_prefix(state, x, past, *state.prefix)
        elif past == 0:
            out = self._apply_prompt(state, x, call)
        else:
            if length != 1:
                raise GuardrailStateError(
                    f"a forward pass outside generate adds {length} positions to a KV cache: "
                    "the guardrail cannot tell more prompt from generated tokens; use "
                    "generate, or pass the whole prompt in one pass and then one token a step"
                )
            record = self._continued(state, batch, past, call)
            refuse_masked_out(
                new_positions(
                    call.mask, batch, length, past, x.device, additive=self._additive_masks()
                )
            )
            out = state.guardrail.continue_rows(x, None, record.fired)  # every new position
            record.seen = past + length
        return hidden if out is x else out.to(hidden.dtype)

    @staticmethod
    def _belongs(
        state: _State, generation: _Generation, call: _Call, past: int, batch: int
    ) -> bool:
        """Whether a pass run while ``generate`` runs is generate's own, or another one (a
        logits processor's), to be decided on its own input as outside generate."""
        if past == 0:
            return generation.starts(call, batch)
        record = state.continued(call)
        return record is None or not record.holds(call) or record.generation is generation

    def _read(self, x: torch.Tensor, call: _Call, *, by_generate: bool = False) -> Any:
        """What a prompt pass attends. ``by_generate``: generate built the call from its own
        mask (it leaves an all-ones mask out), so pad ids in it are text."""
        batch, length = x.shape[:2]
        return read_prompt(
            call.mask,
            batch,
            length,
            x.device,
            input_ids=call.input_ids,
            position_ids=call.position_ids,
            pad_ids=frozenset() if by_generate else self._pad_ids,
            additive=self._additive_masks(),
        )

    def _additive_masks(self) -> bool:
        """Whether the model adds a 4-D mask to its attention scores (eager attention)."""
        return getattr(self._model.config, "_attn_implementation", None) == "eager"

    def _apply_prompt(self, state: _State, x: torch.Tensor, call: _Call) -> torch.Tensor:
        """A pass with no cached positions outside generate: a prompt, decided on what it
        attends (each packed sequence on its own)."""
        view = self._read(x, call)
        guardrail = state.guardrail
        if view.packed:
            out, fired, rates = decide_segments(guardrail, x, view)
            state.add(_Record(fired, rates, x.shape[1], packed=True))
            return out
        out = guardrail(x, view.attended)
        self._new_record(state, x.shape[1])
        return out

    def _decision_of(self, state: _State, x: torch.Tensor, call: _Call) -> _Decision:
        from dsg_runtime.guardrail import countable_positions

        view = self._read(x, call)
        _refuse_packed(view, "a prompt prefilled in chunks")
        state.guardrail.decide_prompt(x, view.attended)
        return _Decision(*_decided(state), countable_positions(view.attended))

    def _new_record(
        self, state: _State, seen: int, generation: _Generation | None = None
    ) -> _Record:
        """Record the rows the guardrail just decided; the decoder's output names their cache."""
        return _noted(state, _Record(*_decided(state), seen, generation=generation))

    def _apply_in_generation(
        self, state: _State, x: torch.Tensor, call: _Call, past: int, generation: _Generation
    ) -> torch.Tensor:
        """A forward pass of ``generate``: its positions before the prompt's end are the prompt,
        decided on the whole prompt at once; those after carry that decision."""
        batch, length = x.shape[:2]
        end = generation.prompt_length
        guardrail = state.guardrail
        if state.prefix is not None:
            raise GuardrailStateError("decided_on_prefix does not apply inside generate")
        if past == 0 and length >= end:  # the whole prompt (and draft tokens, or generated ones)
            view = self._read(x, call, by_generate=True)
            _refuse_packed(view, "generate")
            after = torch.arange(length, device=x.device) >= end
            prompt = view.attended & ~after
            if not bool(prompt.any(dim=1).all()):
                raise GuardrailStateError("a prompt of generate attends none of its tokens")
            out = guardrail.decide_on_prefix(x, prompt, prompt | after)
            self._new_record(state, length, generation)
            return out
        if past >= end:  # decode steps and drafts: every position carries the decision
            record = self._continued(state, batch, past, call)
            record.seen = past + length
            if _unchanged_by_steps(record, guardrail.gate):
                return x
            return guardrail.continue_rows(x, None, record.fired)
        decision = None if generation.decision is None else generation.decision.rows(batch)
        if decision is None:
            raise GuardrailStateError(
                f"generate ran positions {past} to {past + length} of the prompt's {end} alone "
                "and the guardrail was not told the prompt is processed in pieces"
            )
        if past == 0:
            record = _noted(
                state, _Record(decision.fired, decision.rates, 0, generation=generation)
            )
        else:
            record = self._continued(state, batch, past, call)
        decided = decision.countable[:, past : past + length]
        pad = torch.zeros(batch, length - decided.shape[1], dtype=torch.bool, device=x.device)
        decided = torch.cat([decided.to(x.device), pad], dim=1)
        later = torch.arange(past, past + length, device=x.device) >= end
        out = guardrail.apply_decision(x, decided, later, record.fired)
        record.seen = past + length
        return out

    def _apply_prefix(
        self, state: _State, x: torch.Tensor, past: int, decide: torch.Tensor, apply: torch.Tensor
    ) -> torch.Tensor:
        """One pass over prompts and continuations, decided on the prompts (see
        :meth:`decided_on_prefix`)."""
        if past != 0 or decide.shape != x.shape[:2] or apply.shape != x.shape[:2]:
            raise GuardrailStateError(
                f"the guardrail was given prompt masks of shape {tuple(decide.shape)} for a "
                f"call of shape {tuple(x.shape[:2])} after {past} cached positions"
            )
        out = state.guardrail.decide_on_prefix(x, decide, apply)
        self._new_record(state, x.shape[1])
        return out

    def _continued(self, state: _State, batch: int, past: int, call: _Call) -> _Record:
        """The record of the rows a continuation step extends; raises when there is none, or
        when the step's cache is not the one those rows were written to."""
        record = state.continued(call)
        if record is None or record.fired.shape[0] != batch:
            raise GuardrailStateError(
                f"the guardrail saw a continuation step ({past} positions already cached) for "
                "rows whose prompt it did not decide; attach it before the prompt is processed"
            )
        if record.cache is not None and not record.holds(call):
            raise GuardrailStateError(
                f"the guardrail was given a KV cache ({past} positions) that it did not "
                "see filled: its positions may have run unguarded; generate from the "
                "whole prompt instead"
            )
        if record.packed:
            raise GuardrailStateError(
                "a continuation of rows that packed several sequences: each was decided "
                "alone, and the guardrail cannot tell which one the new positions extend"
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


# The hooks run as plain Python under ``torch.compile`` (a graph break around each): their
# bookkeeping (the thread's records, the caches they were written to) must run on every call,
# which a traced graph would not follow. Set here rather than by a decorator, which mutation
# testing (``nox -s mutants``) would skip.
for _hook in ("_capture", "_after_decoder", "_post_hook", "_pre_hook"):
    setattr(GuardrailHandle, _hook, torch.compiler.disable(getattr(GuardrailHandle, _hook)))
del _hook


def _decided(state: _State) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows the thread's guardrail just decided: whether each fired, and its rate."""
    fired, rates = state.guardrail.fired, state.guardrail.rates
    if fired is None or rates is None:
        raise GuardrailStateError("the guardrail decided no rows for this prompt")
    return fired, rates


def _noted(state: _State, record: _Record) -> _Record:
    """Add a decided record; a generation keeps its first one, which ``fired`` reports after."""
    state.add(record)
    if record.generation is not None and record.generation.record is None:
        record.generation.record = record
    return record


def _unchanged_by_steps(record: _Record, gate: Any) -> bool:
    """Whether a generation's later positions leave ``record``'s rows as they are: none of them
    fired and the gate keeps the prompt's decision (``keeps_decision``; a gate without it may
    clamp on a step's own hits). Read once per prompt, so a prompt that did not fire costs its
    decode steps no guardrail arithmetic and no host read."""
    from dsg_runtime.guardrail import keeps_decision

    if record.unchanged_by_steps is None:
        record.unchanged_by_steps = keeps_decision(gate) and not bool(record.fired.any())
    return record.unchanged_by_steps


def _positional_names(forward: Any) -> tuple[str, ...]:
    """The names a decoder's ``forward`` gives its positional arguments, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(forward).parameters.values()
    return tuple(p.name for p in parameters if p.kind in kinds)


def _refuse_packed(view: Any, where: str) -> None:
    if view.packed:
        raise GuardrailStateError(
            f"{where} with rows that pack several sequences (a block-diagonal 4-D mask): "
            "pass each sequence as a row of its own"
        )


def _pad_ids(model: Any) -> frozenset[int]:
    """The pad token ids the model's configs name (a mask-less pass holding one is refused)."""
    configs = (model.config, getattr(model, "generation_config", None))
    ids = (getattr(config, "pad_token_id", None) for config in configs)
    return frozenset(i for i in ids if isinstance(i, int) and not isinstance(i, bool))


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


def guardrails_on(model: Any) -> list[GuardrailHandle]:
    """The guardrails attached to ``model`` and not removed (found by their decoder hooks, so a
    copy of a guarded model reports its own)."""
    hooks = decoder_of(model)._forward_pre_hooks
    found = (getattr(hook, "__self__", None) for hook in hooks.values())
    return [h for h in found if isinstance(h, GuardrailHandle) and h._hooks]


def attach(
    model: Any, bundle: Bundle, *, stack: bool = False, allow_mismatch: bool = False
) -> GuardrailHandle:
    """Put the bundle's guardrail on a transformers causal LM; returns the handle to remove it.

    The model must be the one the bundle was calibrated on (its binding record,
    :func:`dsg_runtime.binding.check_model_matches`); ``allow_mismatch=True`` overrides that, and
    the handle's ``binding_note`` (also logged) says what differed. A model that already carries
    a guardrail is refused unless ``stack=True``: both then apply, one after the other."""
    from dsg_runtime.binding import check_model_matches

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
    if guardrails_on(model) and not stack:
        raise UserError(
            "the model already carries a dsg guardrail; remove it first (handle.remove()), or "
            "pass stack=True to apply both, one after the other"
        )
    note = check_model_matches(bundle, model, allow_mismatch=allow_mismatch)
    return GuardrailHandle(model, bundle, note)
