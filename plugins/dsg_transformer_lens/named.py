"""A model TransformerLens knows by name, loaded without weight processing.

No LayerNorm folding or centring: the weights equal the Hugging Face ones, so SAEs trained on
the HF model's residual stream read the same vectors.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dsg.api import LoadedModel, UserError, hub_lookups, one_line_reason, refuse_custom_code

if TYPE_CHECKING:
    import torch


def official_name(spec: str) -> str | None:
    """TransformerLens's official (hub) name for a name or alias, or None if it knows none."""
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    wanted = spec.lower()
    for official in OFFICIAL_MODEL_NAMES:
        names = [official, *MODEL_ALIASES.get(official, [])]
        if wanted in (name.lower() for name in names):
            return official
    return None


def cached_config(official: str) -> str | None:
    """The path of the model's cached ``config.json``, or None when the cache has none."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(official, "config.json")
    return cached if isinstance(cached, str) else None


def hub_fingerprint(official: str) -> str:
    """The hub name and the commit its cached weights came from, so an updated repo is new input."""
    cached = cached_config(official)
    commit = Path(cached).parent.name if cached else "unknown"
    return f"hub:{official}@{commit}"


def refuse_trusted_code(official: str, *, read_config: bool = True) -> None:
    """A UserError for a model that TransformerLens would load with ``trust_remote_code=True``
    (its list of models that need their repository's code or, with ``read_config``, an
    architecture whose config it marks so), whatever dsg passes: dsg never runs a model's own
    code. The list needs no file, so it is checked before the hub is asked anything."""
    from transformer_lens import loading_from_pretrained as loading

    needs_code = official.startswith(tuple(getattr(loading, "NEED_REMOTE_CODE_MODELS", ())))
    if not needs_code and read_config:
        cfg = loading.get_pretrained_model_config(official, trust_remote_code=False)
        needs_code = bool(getattr(cfg, "trust_remote_code", False))
    if needs_code:
        raise UserError(
            f"TransformerLens loads {official} with the code of its hub repository; dsg never "
            "runs a model's own code. Use a model whose architecture transformers implements"
        )
    if read_config:
        refuse_custom_code(official)


def load_named_model(
    spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
) -> LoadedModel:
    """``HookedTransformer.from_pretrained_no_processing``; only the first ``n_layers`` if set."""
    from huggingface_hub.errors import HfHubHTTPError
    from transformer_lens import HookedTransformer

    official = official_name(spec)
    if official is None:
        raise UserError(
            f"TransformerLens does not know a model named {spec!r}; pass a name from its model "
            "list or the path of a local model directory"
        )
    refuse_trusted_code(official, read_config=False)
    try:
        with hub_lookups() as unreachable, contextlib.redirect_stdout(sys.stderr):
            if unreachable is not None and cached_config(official) is None:
                raise UserError(
                    f"model {official} is not in the Hugging Face cache and {unreachable}; "
                    f"download it where the hub can be reached (`hf download {official}`, after "
                    "`hf auth login` if it is gated), or pass --model with a local model directory"
                )
            refuse_trusted_code(official)
            # TL prints progress; stdout is for results
            model = HookedTransformer.from_pretrained_no_processing(
                official,
                device=device,
                dtype=dtype,
                first_n_layers=n_layers,
                trust_remote_code=False,
            )
    except (OSError, HfHubHTTPError) as exc:  # gated, not cached offline, or missing files
        raise UserError(
            f"could not load the weights of {official}: {one_line_reason(exc)}. If the model "
            "is gated, accept its licence on the hub and log in with `hf auth login`; offline, "
            "point --model at a local model directory"
        ) from None
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=model.tokenizer,
        spec=spec,
        fingerprint=hub_fingerprint(official),
        extra={"official_name": official},
    )
