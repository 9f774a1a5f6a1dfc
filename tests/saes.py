"""SAEs with random weights for guardrail and bundle tests."""

from __future__ import annotations

import math
from typing import Any

import torch
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)


def random_sae(kind: str, *, d_in: int = 16, d_sae: int = 64, seed: int = 0, **cfg: Any) -> Any:
    """A sae_lens SAE with random weights, non-zero biases and thresholds near the median
    pre-activation, so about half the features fire on a standard-normal input."""
    gen = torch.Generator().manual_seed(seed)
    classes = {
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
        "standard": (StandardSAE, StandardSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
    }
    sae_cls, cfg_cls = classes[kind]
    sae = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, **cfg))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / math.sqrt(d_in))
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) * 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1 - 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.2)
        if kind == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.3)
    return sae
