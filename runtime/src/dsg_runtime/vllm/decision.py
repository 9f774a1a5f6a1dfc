"""The decision, taken before the engine: each prompt whole, as ``dsg.hf`` takes it alone.

A ``transformers`` copy of the served model's layers up to the bundle's hook runs the prompt
once, unchunked and unpadded; the bundle's own :class:`dsg.guardrail.Guardrail` computes the
rate and the gate on that residual in float32. Whatever vLLM later does with the prompt
(chunks, cached prefixes, preemption and recompute) cannot change a decision it never takes.

Prompts decided together run as one batch per prompt length, never padded: a pad token would
change the shape every attention reduction runs over, and with it the residual's last bits
(measured: some lengths differ from their pass alone at the 1e-6 level, enough to flip a hit).
Rows of one shape go through the same kernels as the prompt alone once the prompt is long
enough (:data:`BATCH_MIN_TOKENS`), and each row's guardrail runs on its own ``[1, P, D]``
slice, so a prompt decided in a batch is decided as alone (tests compare them, residuals bit
for bit, on the organism's and SmolLM2's shapes). Batching is measured on the CPU only; on
other devices each prompt is decided alone.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg_runtime.errors import UserError

if TYPE_CHECKING:
    import torch

    from dsg_runtime.bundle import Bundle

SALT_PREFIX = "dsg-guardrail"
BATCH_MIN_TOKENS = 32
"""Prompts shorter than this are decided alone: on the CPU a matrix product of few rows takes
another kernel than the same rows inside a larger one (measured: under 12 rows at SmolLM2's
widths, under 4 at the organism's), so a short prompt's rows stacked with others' could round
otherwise."""
BATCH_DEVICES = ("cpu",)
"""Where prompts are batched: the devices whose batch invariance the tests measure. Elsewhere
(a GPU's BLAS picks its kernels by the product's shape) each prompt is decided alone."""


class _Captured(Exception):  # noqa: N818  (a signal, not an error)
    """Stops the deciding pass at the hook: nothing after it is needed."""


def gate_carries_decision(bundle: Bundle, gate: Any) -> bool:
    """True when later tokens follow the prompt's decision (a gate with ``keeps_decision =
    True``: the dynamic and windowed gates, or a plugin's); False for the static clamp, whose
    every request is clamped wherever a feature is active. Any other gate is refused: the
    worker could not apply its carrying rule."""
    from dsg_runtime.guardrail import carries_by_position, keeps_decision

    if not carries_by_position(gate):
        raise UserError(
            f"the vLLM guardrail does not know how the {bundle.strategy!r} strategy's gate carries "
            "its decision to generated tokens (a gate whose carry returns the prompt's decision "
            "says keeps_decision = True); serve it with dsg.hf"
        )
    return keeps_decision(gate)


def cache_salt(user_salt: str | None, bundle_digest: str, fired: bool) -> str:
    """The prefix-cache salt of a request: KV computed under one decision (or bundle) is never
    reused for a request under another; the user's own salt still separates its tenants."""
    return f"{SALT_PREFIX}:{bundle_digest}:{int(fired)}:{user_salt or ''}"


@dataclass
class PromptDecider:
    """Decides prompts (token ids) for one bundle on a truncated copy of the served model, with
    the bundle's guardrail built once (its columns cast once, not per request)."""

    bundle: Bundle
    model: Any
    guardrail: Any
    carries: bool
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        model_path: str | Path,
        dtype: Any,
        device: str,
        revision: str | None = None,
        cache_dir: str | None = None,
        allow_mismatch: bool = False,
    ) -> PromptDecider:
        """The served model's layers up to the hook (the rest are never loaded), at the
        revision vLLM serves and from the folder it downloads to; refused when they are not
        the model the bundle was calibrated on (``allow_mismatch``: for measuring, not serving).
        """
        from transformers import AutoConfig, AutoModelForCausalLM

        from dsg_runtime.binding import check_model_matches
        from dsg_runtime.hf import decoder_layers

        where = {"revision": revision, "cache_dir": cache_dir}
        config = AutoConfig.from_pretrained(model_path, **where)
        keep = bundle.hook_layer + 1
        if keep > config.num_hidden_layers:
            raise UserError(
                f"the bundle hooks layer {bundle.hook_layer} but the model has "
                f"{config.num_hidden_layers} layers"
            )
        if getattr(config, "hidden_size", bundle.d_model) != bundle.d_model:
            raise UserError(
                f"the bundle reads vectors of size {bundle.d_model} but the model's hidden size "
                f"is {config.hidden_size}; use the bundle with the model its SAE was trained on"
            )
        config.num_hidden_layers = keep
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:keep]
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_path, config=config, dtype=dtype, **where
        )
        model = model.to(device).eval()
        assert len(decoder_layers(model)) == keep
        check_model_matches(bundle, model, allow_mismatch=allow_mismatch)
        guardrail = bundle.guardrail()
        return cls(bundle, model, guardrail, gate_carries_decision(bundle, guardrail.gate))

    def decide(self, token_ids: list[int]) -> bool:
        """Whether the guardrail fires on this whole prompt (always True for the static clamp,
        which clamps every active position of every request)."""
        return self.decide_many([token_ids])[0]

    def decide_many(self, prompts: list[list[int]]) -> list[bool]:
        """Each prompt's decision, as :meth:`decide` takes it alone: one forward pass per
        prompt length (a batch of the prompts of that length), the guardrail per prompt."""
        import torch

        if any(not ids for ids in prompts):
            raise UserError("the guardrail cannot decide an empty prompt")
        if not self.carries:  # the static clamp: nothing to compute
            return [True] * len(prompts)
        batches = self.model.device.type in BATCH_DEVICES
        groups: dict[int, list[int]] = defaultdict(list)
        for i, ids in enumerate(prompts):
            groups[len(ids) if batches and len(ids) >= BATCH_MIN_TOKENS else -1 - i].append(i)
        fired = [True] * len(prompts)
        with self.lock:  # the guardrail holds its last decision: one caller at a time
            for rows in groups.values():
                resid = self.residual(torch.tensor([prompts[i] for i in rows], dtype=torch.long))
                for row, i in enumerate(rows):
                    fired[i] = self._decide_residual(resid[row : row + 1])
        return fired

    def _decide_residual(self, resid: torch.Tensor) -> bool:
        import torch

        mask = torch.ones(resid.shape[:2], dtype=torch.bool, device=resid.device)
        self.guardrail.decide_prompt(resid.float(), mask)
        assert self.guardrail.fired is not None
        return bool(self.guardrail.fired[0])

    def residual(self, ids: torch.Tensor) -> torch.Tensor:
        """The residual at the bundle's hook for ``ids`` ``[B, P]`` (no padding, no mask)."""
        import torch

        from dsg_runtime.hf import decoder_layers

        layer = decoder_layers(self.model)[self.bundle.hook_layer]

        def capture(hidden: Any) -> None:
            raise _Captured(hidden[0] if isinstance(hidden, tuple) else hidden)

        if self.bundle.hook_point == "hook_resid_post":
            handle = layer.register_forward_hook(lambda m, a, out: capture(out))
        else:
            handle = layer.register_forward_pre_hook(
                lambda m, a, kw: capture(a[0] if a else kw["hidden_states"]), with_kwargs=True
            )
        try:
            with torch.no_grad():
                self.model(input_ids=ids.to(self.model.device), use_cache=False)
        except _Captured as captured:
            return captured.args[0]  # type: ignore[no-any-return]
        finally:
            handle.remove()
        raise UserError("the guarded layer did not run on the prompt")
