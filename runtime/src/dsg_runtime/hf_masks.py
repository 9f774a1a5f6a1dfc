"""What a forward pass's attention mask says the guardrail may count, or a refusal.

The guardrail decides each row on the tokens the model attends. A 2-D padding mask says that
directly. A prepared 4-D mask ``[B, H, Q, K]`` is read per query row: each position that attends
itself is a token, and the keys it attends must be exactly the tokens from its sequence's first
one up to itself, so a row is one sequence (left padding, holes) or several packed back to back
under a block-diagonal mask, each then decided on its own as if it had been passed alone. Any
other structure (a query that sees later keys, attends others but not itself, skips tokens of its
own sequence, heads that differ, an additive bias other than 0 or -inf) is refused: the gate would
otherwise count tokens the model does not read, or miss ones it does. Without a mask every
position counts, so a call whose ``input_ids`` hold the pad token, or whose ``position_ids``
restart within a row (which transformers may read as packed sequences), is refused, and so is a
row with no attended token at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsg_runtime.errors import GuardrailStateError

if TYPE_CHECKING:
    import torch

    from dsg_runtime.guardrail import Guardrail


@dataclass(frozen=True)
class PromptView:
    """The tokens of a prompt pass, per row: ``attended`` (bool ``[B, T]``) and, for rows that
    pack several sequences, ``segments`` (``[B, T]``, the sequence index of each attended
    position, -1 elsewhere; None when every row is one sequence)."""

    attended: torch.Tensor
    segments: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.segments is not None


def read_prompt(
    mask: Any,
    batch: int,
    length: int,
    device: Any,
    *,
    input_ids: Any = None,
    position_ids: Any = None,
    pad_ids: frozenset[int] = frozenset(),
    additive: bool = False,
) -> PromptView:
    """The tokens of a pass with no cached positions, from whichever mask it carried."""
    import torch

    mask = _full_attention(mask)
    if mask is None:
        _refuse_unmasked(input_ids, position_ids, pad_ids)
        view = PromptView(torch.ones(batch, length, dtype=torch.bool, device=device))
    elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
        if tuple(mask.shape) != (batch, length):
            raise GuardrailStateError(
                f"the attention mask has shape {tuple(mask.shape)} for a pass of "
                f"{batch} rows of {length} positions"
            )
        view = PromptView(mask.to(device=device, dtype=torch.bool))
    else:
        attends = _attends(mask, batch, length, past=0, additive=additive)
        view = _segments(attends.to(device))
    empty = ~view.attended.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise GuardrailStateError(
            f"batch row {rows[0]} attends no token (all-zero attention mask): the model still "
            "reads its positions, but the guardrail would count nothing; pass a mask with the "
            "row's real tokens"
        )
    return view


def new_positions(
    mask: Any, batch: int, length: int, past: int, device: Any, *, additive: bool = False
) -> torch.Tensor:
    """Which of a continuation's new positions are tokens (bool ``[B, length]``): the tail of a
    2-D mask; under a 4-D mask, the positions that attend themselves, each of which must continue
    its row's sequence (attend a cached position) and see no later key."""
    import torch

    mask = _full_attention(mask)
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask[:, -length:].to(device=device, dtype=torch.bool)
    attends = _attends(mask, batch, length, past, additive=additive)
    query = torch.arange(length, device=attends.device)
    own = attends[:, query, past + query]
    earlier = attends[:, :, :past].any(dim=-1)
    if bool((own & ~earlier).any()):
        raise GuardrailStateError(
            "a continuation's 4-D attention mask starts a new sequence (a new position attends "
            "no cached one); the guardrail decides sequences on their prompt only"
        )
    return own.to(device)


def _full_attention(mask: Any) -> Any:
    """transformers 5 passes one mask per attention type: the full-attention one says which
    tokens a position may read (a sliding window only narrows it further)."""
    if isinstance(mask, dict):
        return mask.get("full_attention", next(iter(mask.values()), None))
    return mask


def refuse_masked_out(new: torch.Tensor) -> None:
    """Generated positions (decode steps) are tokens: one masked out would still be computed by
    the model, but not clamped."""
    if not bool(new.all()):
        raise GuardrailStateError(
            "the attention mask masks out a position after the prompt: the model still "
            "computes it, but the guardrail would not clamp it; generated positions are attended"
        )


def _refuse_unmasked(input_ids: Any, position_ids: Any, pad_ids: frozenset[int]) -> None:
    import torch

    if isinstance(input_ids, torch.Tensor) and pad_ids:
        pads = torch.tensor(sorted(pad_ids), device=input_ids.device)
        if bool(torch.isin(input_ids, pads).any()):
            raise GuardrailStateError(
                f"input_ids hold the pad token ({sorted(pad_ids)[0]}) and no attention_mask "
                "was passed, so the guardrail cannot tell padding from text; pass the "
                "attention_mask"
            )
    if isinstance(position_ids, torch.Tensor) and position_ids.shape[-1] > 1:
        steps = position_ids[..., 1:] - position_ids[..., :-1]
        if bool((steps != 1).any()):
            raise GuardrailStateError(
                "position_ids restart within a row (packed sequences) and no attention_mask "
                "was passed; pass a 4-D block-diagonal mask the guardrail can read"
            )


def _attends(
    mask: Any, batch: int, length: int, past: int, *, additive: bool = False
) -> torch.Tensor:
    """Bool ``[B, Q, K]``: which keys each query attends, from a 4-D mask of one structure the
    guardrail reads: every head alike, boolean or additive (0 or -inf/most negative), no key past
    the query's own position, and a query that does not attend itself attends nothing.
    ``additive``: the model adds the mask to its scores (eager attention), so a boolean one
    masks nothing and is refused."""
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise GuardrailStateError(
            "the guardrail cannot read this call's attention mask; pass a 2-D attention_mask"
        )
    if mask.shape[0] not in (1, batch) or mask.shape[2] != length or mask.shape[3] < past + length:
        raise GuardrailStateError(
            f"the 4-D attention mask {tuple(mask.shape)} does not fit a pass of {batch} rows "
            f"of {length} positions after {past} cached ones"
        )
    if mask.dtype == torch.bool and additive:
        raise GuardrailStateError(
            "a boolean 4-D attention mask under eager attention is added to the scores, not "
            "applied as a mask; pass an additive float mask (0 and -inf)"
        )
    if mask.dtype == torch.bool:
        attends = mask
    elif mask.is_floating_point():
        attends = mask == 0
        masked = mask <= torch.finfo(mask.dtype).min / 2
        if not bool((attends | masked).all()):
            raise GuardrailStateError(
                "the 4-D attention mask adds a bias other than 0 and -inf; the guardrail "
                "cannot tell which tokens the model reads"
            )
    else:
        raise GuardrailStateError(
            f"the 4-D attention mask is {mask.dtype}; pass a boolean or additive float mask"
        )
    if mask.shape[1] > 1 and not bool((attends == attends[:, :1]).all()):
        raise GuardrailStateError("the 4-D attention mask differs between heads")
    attends = attends[:, 0].expand(batch, -1, -1)
    query = torch.arange(length, device=attends.device)[:, None] + past
    key = torch.arange(attends.shape[-1], device=attends.device)[None, :]
    if bool((attends & (key > query)).any()):
        raise GuardrailStateError(
            "the 4-D attention mask lets a position attend a later one; the guardrail reads "
            "causal masks only"
        )
    attends = attends[..., : past + length]
    own = attends[:, torch.arange(length), past + torch.arange(length)]
    if bool((attends.any(dim=-1) & ~own).any()):
        raise GuardrailStateError(
            "in the 4-D attention mask a position attends others but not itself; the guardrail "
            "cannot tell whether it is a token"
        )
    return attends


def _segments(attends: torch.Tensor) -> PromptView:
    """Each row's sequences from a prompt's ``[B, T, T]`` attends: a token's first attended key
    starts its sequence, and it must attend every token from there to itself."""
    import torch

    batch, length, _ = attends.shape
    own = attends.diagonal(dim1=1, dim2=2)
    start = torch.where(own, attends.to(torch.int8).argmax(dim=-1), -1)
    key = torch.arange(length, device=attends.device)
    expected = (key[None, None, :] >= start[..., None]) & (key[None, None, :] <= key[:, None])
    expected &= own[:, None, :] & own[..., None]
    if not torch.equal(expected, attends):
        raise GuardrailStateError(
            "the 4-D attention mask is neither causal with padding nor block-diagonal over "
            "packed sequences; the guardrail cannot tell which tokens each position reads"
        )
    segments = torch.full((batch, length), -1, dtype=torch.long, device=attends.device)
    for row in range(batch):
        starts = start[row][own[row]]
        later = starts[1:]
        if bool((later < starts[:-1]).any()) or not bool(own[row][starts].all()):
            raise GuardrailStateError("the 4-D attention mask's sequences interleave")
        if bool((start[row][starts] != starts).any()):
            raise GuardrailStateError("the 4-D attention mask's sequences interleave")
        segments[row][own[row]] = torch.unique(starts, return_inverse=True)[1]
    packed = bool((segments.amax(dim=1) > 0).any())
    return PromptView(own, segments if packed else None)


def decide_segments(
    guardrail: Guardrail, x: torch.Tensor, view: PromptView
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decide and clamp each packed sequence as a row of its own (its first token its BOS, its
    rate over its own tokens); returns the edited residual and, per row, whether any of its
    sequences fired and the highest of their rates."""
    import torch

    assert view.segments is not None
    rows: list[int] = []
    ids: list[int] = []
    for r in range(x.shape[0]):
        found = view.segments[r].unique()
        found = found[found >= 0].tolist()
        rows += [r] * len(found)
        ids += found
    row = torch.tensor(rows, device=x.device)
    own = view.segments[row] == torch.tensor(ids, device=x.device)[:, None]
    edited = guardrail(x[row], own)
    fired, rates = guardrail.fired, guardrail.rates
    assert fired is not None and rates is not None
    out = x.clone()
    for n, r in enumerate(rows):
        out[r] = torch.where(own[n, :, None], edited[n], out[r])
    any_fired = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    any_fired = any_fired.scatter_reduce(0, row, fired.long(), "amax").bool()
    highest = torch.zeros(x.shape[0], dtype=rates.dtype, device=x.device)
    highest = highest.scatter_reduce(0, row, rates, "amax")
    return out, any_fired, highest
