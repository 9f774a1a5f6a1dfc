"""A model handler for open-unlearning: the base model with a dsg guardrail bundle attached.

open-unlearning builds models through ``MODEL_REGISTRY[model_handler].from_pretrained(...)``;
register :class:`GuardedModel` there and name it as the ``model_handler`` of a model config (see
docs/open-unlearning.md). Nothing here imports open-unlearning, so the registration is one import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsg_runtime.errors import UserError

BUNDLE_KWARG = "dsg_bundle"
MISMATCH_KWARG = "dsg_allow_model_mismatch"
BUNDLE_SUBDIR = "dsg_bundle"


def _bundle_dir(pretrained_model_name_or_path: str | Path, given: str | Path | None) -> Path:
    """The ``dsg_bundle`` argument, else a ``dsg_bundle/`` folder inside a local model directory."""
    if given is not None:
        return Path(given)
    inside = Path(pretrained_model_name_or_path) / BUNDLE_SUBDIR
    if inside.is_dir():
        return inside
    raise UserError(
        f"no dsg guardrail bundle for {pretrained_model_name_or_path}: pass {BUNDLE_KWARG}=DIR "
        f"(model_args.{BUNDLE_KWARG} in the model config) or put the bundle in {BUNDLE_SUBDIR}/ "
        "inside the model directory"
    )


class GuardedModel:
    """``from_pretrained`` returns the ``AutoModelForCausalLM`` itself with the guardrail hooked
    in, so every harness code path (``generate``, forward log-likelihoods, ``.config``) runs
    unchanged; the handle is at ``model.dsg_guardrail``. The model's own code never runs
    (``trust_remote_code=False``; a model with ``auto_map`` is refused). The model must be the
    one the bundle was calibrated on, unless ``dsg_allow_model_mismatch=True`` overrides the
    check (logged, and kept in ``model.dsg_guardrail.binding_note``)."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any
    ) -> Any:
        from transformers import AutoModelForCausalLM

        from dsg_runtime.bundle import Bundle
        from dsg_runtime.hf import attach
        from dsg_runtime.remote_code import refuse_custom_code, refuse_trusting_code

        bundle = Bundle.load(
            _bundle_dir(pretrained_model_name_or_path, kwargs.pop(BUNDLE_KWARG, None))
        )
        allow_mismatch = kwargs.pop(MISMATCH_KWARG, False)
        if not isinstance(allow_mismatch, bool):
            raise UserError(f"{MISMATCH_KWARG} must be true or false")
        refuse_trusting_code(kwargs)
        refuse_custom_code(pretrained_model_name_or_path)
        model: Any = AutoModelForCausalLM.from_pretrained(
            pretrained_model_name_or_path, *args, **{**kwargs, "trust_remote_code": False}
        )
        model.dsg_guardrail = attach(model, bundle, allow_mismatch=allow_mismatch)
        return model
