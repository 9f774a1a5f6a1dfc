"""A sae_lens SAE saved on disk: ``cfg.json`` + ``sae_weights.safetensors`` (``SAE.save_model``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api import (
    LoadedSAE,
    UserError,
    hook_layer_of,
    one_line_reason,
    parse_json,
    unreadable_file_errors,
)

if TYPE_CHECKING:
    import torch

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def is_sae_dir(spec: str) -> bool:
    """True for an existing directory holding a sae_lens ``cfg.json``."""
    return (Path(spec) / CFG_FILE).is_file()


def dtype_name(dtype: torch.dtype) -> str:
    """sae_lens takes dtypes by name (``float32``)."""
    return str(dtype).removeprefix("torch.")


def fingerprint_sae_dir(path: Path) -> str:
    """A sha256 of the config and the weights: a retrained SAE in the same folder is a new input."""
    digest = hashlib.sha256((path / CFG_FILE).read_bytes())
    with (path / WEIGHTS_FILE).open("rb") as handle:
        digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def load_sae_dir(spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
    """``SAE.load_from_disk``, with the hook point and model read from the config's metadata."""
    from sae_lens import SAE

    path = Path(spec)
    if not is_sae_dir(spec):
        raise UserError(f"{path} is not a sae_lens SAE directory (no {CFG_FILE})")
    if not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"SAE directory {path} has no {WEIGHTS_FILE}; save it with SAE.save_model")
    try:
        if not isinstance(parse_json((path / CFG_FILE).read_text(encoding="utf-8")), dict):
            raise ValueError(f"{CFG_FILE} is not a JSON object")
        sae = SAE.load_from_disk(path, device=device, dtype=dtype_name(dtype))
    except TypeError as exc:  # a cfg.json value of the wrong type reaching torch or sae_lens
        raise UserError(
            f"{path / CFG_FILE} holds a value of the wrong type ({one_line_reason(exc)}); "
            "save the SAE again with SAE.save_model"
        ) from None
    except RuntimeError:  # torch's load_state_dict: weights whose shapes differ from cfg.json
        raise UserError(
            f"the weights in SAE directory {path} do not fit its {CFG_FILE} (another SAE's "
            "weights or config?); save the SAE again with SAE.save_model"
        ) from None
    except unreadable_file_errors() as exc:
        reason = one_line_reason(exc)
        raise UserError(
            f"could not load the SAE in {path} ({reason}); its files are corrupted or "
            "incomplete: save or download it again"
        ) from None
    no_hook = (
        f"the SAE in {path} does not say which hook it reads: set metadata.hook_name "
        "(e.g. blocks.3.hook_resid_post) in its cfg.json"
    )
    return ready_sae(sae, spec, sae.cfg.metadata.model_name, fingerprint_sae_dir(path), no_hook)


def ready_sae(
    sae: Any,
    spec: str,
    model_name: str | None,
    fingerprint: str,
    no_hook: str,
    l0: float | None = None,
) -> LoadedSAE:
    """A loaded sae_lens SAE in eval mode with its hook point; ``no_hook`` is the error when its
    config names no hook."""
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise UserError(no_hook)
    sae.eval()
    return LoadedSAE(
        sae=sae,
        spec=spec,
        hook_name=hook_name,
        hook_layer=hook_layer_of(hook_name),
        model_name=model_name,
        fingerprint=fingerprint,
        l0=l0,
    )
