"""A JumpReLU SAE built by hand for guardrail tests: its first k features read the direction from
retain-like to forget-like residuals, so they fire on forget-like prompts far more often."""

from __future__ import annotations

import math

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig


def direction_sae(
    forget_mean: torch.Tensor,
    retain_mean: torch.Tensor,
    d_sae: int,
    k: int,
    *,
    noise: float,
    other_bias: float,
) -> JumpReLUSAE:
    """Features 0..k-1: the retain-to-forget direction plus ``noise`` (relative), each biased to
    fire past the midpoint of the two means; the others random with bias ``other_bias``."""
    gen = torch.Generator().manual_seed(0)
    d = forget_mean.shape[0]
    gap = forget_mean - retain_mean
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        w_enc = torch.randn(d, d_sae, generator=gen) / math.sqrt(d)
        b_enc = torch.full((d_sae,), other_bias)
        for j in range(k):
            direction = gap + noise * gap.norm() * torch.randn(d, generator=gen) / math.sqrt(d)
            direction = direction / direction.norm()
            w_enc[:, j] = direction
            b_enc[j] = -float((forget_mean + retain_mean) / 2 @ direction)
        w_dec = torch.randn(d_sae, d, generator=gen)
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.b_dec.zero_()
        sae.threshold.fill_(0.0)
    return sae
