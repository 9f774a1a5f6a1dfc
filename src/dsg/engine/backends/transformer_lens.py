"""The TransformerLens backend: the reference's numerics, and what the parity checks run on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.engine.backends.base import at_positions

if TYPE_CHECKING:
    import torch

NAME = "transformer_lens"


class TransformerLensBackend:
    """A ``HookedTransformer`` run with ``stop_at_layer`` / ``start_at_layer``."""

    name = NAME

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.n_layers = int(model.cfg.n_layers)
        self.d_model = int(model.cfg.d_model)
        self.n_ctx = int(model.cfg.n_ctx)

    @property
    def device(self) -> torch.device:
        return self.model.W_U.device

    def to_hook(self, tokens: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
        return self.model(
            tokens.to(self.device), stop_at_layer=split, attention_mask=mask.to(self.device)
        )

    def from_hook(
        self,
        resid: torch.Tensor,
        mask: torch.Tensor,
        last: torch.Tensor,
        split: int,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from transformer_lens.utilities.activation_functions import apply_softcap

        model = self.model
        width = int(last.max()) + 1
        resid = model(
            resid[:, :width],
            start_at_layer=split,
            stop_at_layer=self.n_layers,
            attention_mask=mask[:, :width].to(resid.device),
        )
        final = at_positions(resid, last, rows)[:, None, :]
        if model.cfg.normalization_type is not None:
            final = model.ln_final(final)
        return apply_softcap(model.unembed(final)[:, 0], model.cfg.output_logits_soft_cap)

    def hook_activations(self, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
        from dsg_runtime.hook_names import hook_layer_of

        _, cache = self.model.run_with_cache(
            tokens.to(self.device),
            stop_at_layer=hook_layer_of(hook_name) + 1,
            names_filter=hook_name,
        )
        return cache[hook_name]
