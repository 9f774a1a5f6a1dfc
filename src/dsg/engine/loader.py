"""The one way dsg loads a transformers causal LM and its tokenizer (the transformers backend,
``dsg generate``): from a directory or a hub id, offline when the hub cannot be reached, never a
model that ships code of its own, and with a failure as one line that says what to pass instead.

Attention: SDPA when the architecture supports it, else eager; always eager when the config sets
an attention-logit softcap (Gemma-2), which SDPA cannot apply. transformers 5 declares no SDPA
support for Gemma-2 for that reason; its eager attention applies the softcap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError, one_line_reason, unreadable_file_errors
from dsg.core.loading import hub_lookups_for, no_progress_bars, refuse_custom_code

if TYPE_CHECKING:
    import torch

BACKEND_FIX = "Pass --backend transformer_lens"


def attention_implementation(model_class: Any, config: Any) -> str:
    """``sdpa`` where the model class supports it and the config sets no attention-logit
    softcap, else ``eager``: SDPA cannot apply a softcap, and an SDPA path that dropped it
    silently would change the model."""
    if getattr(config, "attn_logit_softcapping", None):
        return "eager"
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


@contextmanager
def _loading(reference: str, fix: str) -> Iterator[None]:
    """Hub lookups as :func:`hub_lookups_for` allows, code refused, failures in one line."""
    try:
        with hub_lookups_for(reference):
            refuse_custom_code(reference)
            with no_progress_bars():
                yield
    except RuntimeError as exc:  # weights whose shapes differ from config.json
        raise UserError(
            f"the weights of the transformers model {reference!r} do not fit its config.json "
            f"(another model's weights or config?): {type(exc).__name__}"
        ) from None
    except unreadable_file_errors() as exc:
        reason = one_line_reason(exc)
        raise UserError(
            f"could not load the transformers model {reference!r}: {reason}. {fix}"
        ) from None


def load_causal_lm(
    reference: str, *, device: str, dtype: torch.dtype, fix: str = BACKEND_FIX
) -> Any:
    """A transformers causal LM in eval mode on ``device``, with the attention chosen as above.
    ``fix``: what the user can pass instead, ending the error line."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    with _loading(reference, fix):
        config = AutoConfig.from_pretrained(reference, trust_remote_code=False)
        model_class = getattr(transformers, (config.architectures or [""])[0], None)
        model: Any = AutoModelForCausalLM.from_pretrained(
            reference,
            dtype=dtype,
            attn_implementation=attention_implementation(model_class, config),
            trust_remote_code=False,
        )
    return model.to(device).eval()


def load_tokenizer(reference: str, *, fix: str = BACKEND_FIX) -> Any:
    """The tokenizer saved with the model at ``reference``, under the same rules."""
    from transformers import AutoTokenizer

    with _loading(reference, fix):
        return AutoTokenizer.from_pretrained(reference, trust_remote_code=False)
