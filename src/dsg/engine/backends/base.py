"""What the engine needs from a model, whatever library runs it.

The MCQ scorer and the sparsity stage split the forward pass at the SAE's hook: they run the
blocks before it, edit (or encode) the residual stream there, and resume from it. A backend
provides exactly that, on right-padded batches with a boolean attention mask ``[B, T]``
(True on real tokens), and the logits of the positions asked for only (the last real one, or
each token of an answer), after the final norm, the unembedding and the model's final-logit
softcap.

A backend may also offer ``prefix_shared_logits(prefix, suffixes, batch_size, pad_id)``: the
final logits at the last token of ``prefix + suffix`` for each suffix, with the prefix computed
once. The scorer uses it, when present, for a question's answer orders (the transformers
backend does, through its KV cache).

A :class:`PackingBackend` also runs packed rows: several continuations of one context in one
row, each attending to the context and to itself only, at the positions they would have alone.
Log-likelihood scoring packs a question's four options after its context when the backend
can (the transformers backend can; TransformerLens, whose attention makes its own causal mask
and positions, cannot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dsg.core.errors import UserError
from dsg_runtime.hook_names import resid_hook

if TYPE_CHECKING:
    import torch


@runtime_checkable
class ModelBackend(Protocol):
    """A causal LM split at a block boundary.

    ``split`` is the index of the block whose input is read or resumed from (the residual at
    ``blocks.L.hook_resid_pre`` is the input of block ``L``, ``hook_resid_post`` of block ``L``
    the input of block ``L + 1``); ``split == n_layers`` is the input of the final norm.
    """

    name: str
    tokenizer: Any
    n_layers: int
    d_model: int
    n_ctx: int

    @property
    def device(self) -> torch.device: ...

    def to_hook(self, tokens: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
        """The residual stream ``[B, T, d_model]`` at the input of block ``split``."""
        ...

    def from_hook(
        self,
        resid: torch.Tensor,
        mask: torch.Tensor,
        last: torch.Tensor,
        split: int,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[N, vocab]`` at positions ``last`` (``[N]``), running blocks ``split``
        onwards on ``resid``, then the final norm, unembedding and final softcap. ``rows``
        (``[N]``) says whose position each is; None reads one position per row (``N == B``)."""
        ...

    def hook_activations(self, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
        """The activations at a TransformerLens hook name for full (unpadded) rows."""
        ...


@runtime_checkable
class PackingBackend(ModelBackend, Protocol):
    """A backend that also runs rows whose attention pattern and positions are given.

    ``positions`` (``[B, T]``) are each token's rotary positions, ``allowed`` (bool
    ``[B, T, T]``) whether query ``i`` may attend key ``j``; a sliding window applies to the
    distance in ``positions``. Every query must be allowed at least one key."""

    def to_hook_packed(
        self, tokens: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, split: int
    ) -> torch.Tensor:
        """The residual stream ``[B, T, d_model]`` at the input of block ``split``."""
        ...

    def from_hook_packed(
        self,
        resid: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        read: torch.Tensor,
        split: int,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[N, vocab]`` at ``(rows[i], read[i])``, as :meth:`ModelBackend.from_hook`."""
        ...


def split_layer(hook_name: str) -> int:
    """The block at which the forward pass resumes after the hook: ``resid_pre`` of block L is
    the input of block L, ``resid_post`` of block L the input of block L + 1."""
    parsed = resid_hook(hook_name)
    if parsed is None:
        raise UserError(
            f"the MCQ engine edits the residual stream, but the SAE reads {hook_name!r}; "
            "use an SAE on blocks.N.hook_resid_pre or blocks.N.hook_resid_post"
        )
    layer, point = parsed
    return layer if point == "hook_resid_pre" else layer + 1


def at_positions(
    hidden: torch.Tensor, last: torch.Tensor, rows: torch.Tensor | None
) -> torch.Tensor:
    """``hidden[rows[i], last[i]]`` for each i (``[N, d_model]``), as ``from_hook`` reads it:
    ``rows`` None reads one position per row."""
    import torch

    whose = torch.arange(hidden.shape[0]) if rows is None else rows
    return hidden[whose.to(hidden.device), last.to(hidden.device)]
