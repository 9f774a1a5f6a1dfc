"""A bundle is bound to the model it was calibrated on.

The guardrail's decision is a function of the residual stream at its hook, so a bundle records
what that function looked like when it was made: the residual at the hook for a fixed probe of
:data:`PROBE_LENGTH` token ids (spread over the vocabulary, no tokenizer needed). Wherever a
bundle meets a model, the same probe runs through the model up to the hook and each position's
residual must lie within :data:`TOLERANCE` of the recorded one (relative L2 distance, the worst
position counts). The tolerance admits a change of dtype (float32 to bfloat16) or device, and
refuses a fine-tuned copy or another model of the same width: see docs/bundle.md for the
measurements it was chosen from. A model that differs is refused in one line unless the caller
overrides the check, which is then logged and returned so that the run can record it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dsg_runtime.decoder import decoder_layers
from dsg_runtime.errors import UserError
from dsg_runtime.hook_names import resid_hook

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROBE_LENGTH",
    "TOLERANCE",
    "ModelBinding",
    "check_model_matches",
    "binding_from_activations",
    "probe_activations",
    "probe_ids",
    "record_binding",
]

PROBE_LENGTH = 16
TOLERANCE = 0.03
"""The largest relative L2 distance between a position's recorded and measured residual."""
PROBE_TENSOR = "binding_probe"
"""The name of the recorded residuals in the bundle's tensor file."""

log = logging.getLogger("dsg_runtime")


@dataclass(frozen=True)
class ModelBinding:
    """What a bundle's decision depends on: the residual ``activations`` (float32 ``[T, D]``)
    at its hook for the probe ``token_ids``, and the ``tolerance`` a model must meet."""

    token_ids: tuple[int, ...]
    activations: torch.Tensor
    tolerance: float = TOLERANCE

    def validate(self, d_model: int) -> None:
        import torch

        if not self.token_ids or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31
            for i in self.token_ids
        ):
            raise UserError("binding.token_ids must be a non-empty list of token ids")
        if tuple(self.activations.shape) != (len(self.token_ids), d_model):
            raise UserError(
                f"binding probe has shape {tuple(self.activations.shape)}, expected "
                f"({len(self.token_ids)}, {d_model})"
            )
        if self.activations.dtype != torch.float32 or not bool(
            torch.isfinite(self.activations).all()
        ):
            raise UserError("binding probe must hold finite float32 values")
        if not 0.0 < self.tolerance <= 1.0:
            raise UserError(f"binding.tolerance must lie in (0, 1], not {self.tolerance!r}")

    def config(self) -> dict[str, Any]:
        """The JSON half (the activations travel in the tensor file)."""
        return {"token_ids": list(self.token_ids), "tolerance": self.tolerance}


class _Bound(Protocol):
    """What the check reads of a bundle."""

    @property
    def hook_name(self) -> str: ...

    @property
    def binding(self) -> ModelBinding | None: ...


def probe_ids(vocab_size: int) -> tuple[int, ...]:
    """:data:`PROBE_LENGTH` token ids spread over a vocabulary of ``vocab_size`` (a fixed
    stride, so every reader computes the same ids)."""
    if vocab_size < 2:
        raise UserError(f"a vocabulary of {vocab_size} tokens cannot be probed")
    return tuple((7919 * (i + 1)) % vocab_size for i in range(PROBE_LENGTH))


def binding_from_activations(token_ids: tuple[int, ...], activations: Any) -> ModelBinding:
    """The record of residuals measured at the hook for ``token_ids`` (``[T, D]`` or
    ``[1, T, D]``), by any implementation of the model (dsg measures with TransformerLens)."""
    acts = activations.detach().reshape(len(token_ids), -1).to("cpu").float().contiguous()
    return ModelBinding(tuple(int(i) for i in token_ids), acts)


def record_binding(model: Any, hook_name: str) -> ModelBinding:
    """Record a transformers causal LM's residual at ``hook_name`` for the probe."""
    ids = probe_ids(int(model.config.vocab_size))
    return binding_from_activations(ids, probe_activations(model, hook_name, ids))


class _Probed(Exception):  # noqa: N818  (a signal, not an error)
    """Stops the probe's forward pass at the hook."""


def probe_activations(model: Any, hook_name: str, token_ids: tuple[int, ...]) -> torch.Tensor:
    """The residual ``[T, D]`` (float32, CPU) of a transformers causal LM at ``hook_name`` for
    ``token_ids``, one unpadded row; the pass stops at the hook (no later layer runs)."""
    import torch

    parsed = resid_hook(hook_name)
    if parsed is None:
        raise UserError(f"hook {hook_name!r} is not a residual hook")
    index, point = parsed
    layer = decoder_layers(model)[index]
    seen: list[torch.Tensor] = []

    def post(module: Any, args: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)
        raise _Probed

    def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(args[0] if args else kwargs["hidden_states"])
        raise _Probed

    if point == "hook_resid_post":
        hook = layer.register_forward_hook(post, prepend=True)
    else:
        hook = layer.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([list(token_ids)], device=device)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except _Probed:
        pass
    finally:
        hook.remove()
    if not seen:
        raise UserError(f"the probe pass did not reach {hook_name}")
    return seen[0][0].detach().to("cpu", torch.float32)


def distance(binding: ModelBinding, activations: torch.Tensor) -> float:
    """The worst position's relative L2 distance between recorded and measured residuals."""
    import torch

    recorded = binding.activations
    gap = (activations.float() - recorded).norm(dim=-1)
    scale = recorded.norm(dim=-1).clamp(min=torch.finfo(torch.float32).tiny)
    return float((gap / scale).max())


def _mismatch(binding: ModelBinding | None, model: Any, hook_name: str) -> str | None:
    """What differs between the record and the model, in a few words (None: nothing)."""
    if binding is None:
        return (
            "the bundle records no model binding (it predates bundle format 5, or was made "
            "without a model)"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and max(binding.token_ids) >= vocab:
        return f"the bundle's probe tokens lie outside the model's vocabulary of {vocab}"
    acts = probe_activations(model, hook_name, binding.token_ids)
    if acts.shape != binding.activations.shape:
        recorded = tuple(binding.activations.shape)
        return f"the model's residual is {tuple(acts.shape)}, the bundle's record {recorded}"
    gap = distance(binding, acts)
    if gap > binding.tolerance:
        return (
            f"the model's residual at {hook_name} on the bundle's probe differs from the "
            f"recorded one by {gap:.3g} (relative; at most {binding.tolerance:g} allowed)"
        )
    return None


def check_model_matches(bundle: _Bound, model: Any, *, allow_mismatch: bool = False) -> str | None:
    """Refuse (UserError, one line) a transformers model that is not the one ``bundle`` was
    calibrated on. With ``allow_mismatch=True`` a mismatch is logged instead and its description
    returned for the caller to record; None means the model matched."""
    problem = _mismatch(bundle.binding, model, bundle.hook_name)
    if problem is None:
        return None
    if not allow_mismatch and bundle.binding is None:
        raise UserError(
            f"{problem}; export the bundle again (dsg muse-export) to record its model, or pass "
            "allow_mismatch=True to use it unchecked"
        )
    if not allow_mismatch:
        raise UserError(
            f"{problem}: the guardrail was calibrated on another model. Use it with that "
            "model, export a bundle from this one (dsg muse-export), or pass "
            "allow_mismatch=True to use it anyway"
        )
    note = f"guardrail used on a model it was not calibrated on (override given): {problem}"
    log.warning("dsg: %s", note)
    return note
