"""A tiny random Llama and a bundle whose feature 0 fires on token 1 only among tokens 0 and 1.

Layer 0 passes its input through (its attention and MLP outputs are zeroed), so the residual
after it (``blocks.0.hook_resid_post``) is the token's embedding: token 0 embeds as zero, token 1
as a vector on which feature 0 reads exactly 2.0. Rates on prompts of these two tokens can
therefore be counted by hand; later layers stay random, so the clamp changes what is generated.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dsg_runtime.binding import record_binding
from dsg_runtime.bundle import Bundle

HIDDEN = 16
HIT = 1  # the token that fires feature 0
QUIET = 0  # the token that fires nothing


def tiny_llama(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=QUIET,
        bos_token_id=None,
        eos_token_id=None,  # generation runs its full length
    )
    model = LlamaForCausalLM(config).eval()
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[QUIET] = 0.0
        model.model.embed_tokens.weight[HIT] = _direction() * 2.0
    return model


def _direction() -> torch.Tensor:
    """A unit vector: feature 0's encoder column (so token 1, twice it, reads 2.0)."""
    w = torch.linspace(-1.0, 1.0, HIDDEN)
    return w / w.norm()


def tiny_bundle(
    strategy: str = "dynamic",
    threshold: float | None = 0.8,
    multiplier: float = 50.0,
    params: dict[str, Any] | None = None,
    strategies: Any = None,
) -> Bundle:
    """Two features: 0 reads along token 1's embedding, 1 the opposite way (never fires on
    tokens 0 and 1); the decoder rows are the encoder columns. Bound to ``tiny_llama()``."""
    w = _direction()
    w_enc = torch.stack([w, -w], dim=1)
    return Bundle(
        hook_name="blocks.0.hook_resid_post",
        features=(0, 1),
        threshold=threshold,
        multiplier=multiplier,
        strategy=strategy,
        activation="relu",
        apply_b_dec_to_input=False,
        d_sae=4,
        tensors={
            "W_enc": w_enc.contiguous(),
            "b_enc": torch.zeros(2),
            "W_dec": w_enc.T.contiguous(),
            "b_dec": torch.zeros(HIDDEN),
        },
        strategy_params=params or {},
        strategies=strategies,
        binding=_binding(),
    )


def _binding() -> Any:
    """The binding record of ``tiny_llama()``, built without touching the caller's random
    numbers (a test may have seeded them for sampling)."""
    with torch.random.fork_rng():
        return record_binding(tiny_llama(), "blocks.0.hook_resid_post")


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of rows left-padded with token 0."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[QUIET] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask
