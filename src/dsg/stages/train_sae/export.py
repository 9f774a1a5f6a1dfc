"""The trained weights as a sae_lens SAE folder (``cfg.json`` and ``sae_weights.safetensors``),
which ``sae_lens.SAE.load_from_disk`` and dsg's ``local-sae`` loader read."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sae_lens_sae(
    weights: dict, architecture: str, k: int, hook: str, model_name: str, context_size: int
) -> Any:
    """A sae_lens ``TopKSAE`` or ``JumpReLUSAE`` holding ``weights`` (raw-activation scale)."""
    import torch
    from sae_lens import SAE, JumpReLUSAEConfig, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, width = weights["W_enc"].shape
    common: dict[str, Any] = {
        "d_in": int(d_in),
        "d_sae": int(width),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": SAEMetadata(
            hook_name=hook, model_name=model_name, context_size=context_size, prepend_bos=True
        ),
    }
    cfg = TopKSAEConfig(k=k, **common) if architecture == "topk" else JumpReLUSAEConfig(**common)
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    return sae


def save(sae: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(folder))
