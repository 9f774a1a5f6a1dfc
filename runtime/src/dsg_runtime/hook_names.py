"""TransformerLens hook names (``blocks.3.hook_resid_post``): the one place they are parsed."""

from __future__ import annotations

import re

from dsg_runtime.errors import UserError

BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")
RESID_POINTS = ("hook_resid_pre", "hook_resid_post")


def parse_hook_name(hook_name: str) -> tuple[int, str] | None:
    """``blocks.3.hook_resid_post`` -> ``(3, "hook_resid_post")``; None for a name outside a
    block (``hook_embed``, a typo)."""
    match = BLOCK_HOOK.fullmatch(hook_name)
    return None if match is None else (int(match.group(1)), match.group(2))


def resid_hook(hook_name: str) -> tuple[int, str] | None:
    """:func:`parse_hook_name` for a residual-stream hook of a block; None for any other hook."""
    parsed = parse_hook_name(hook_name)
    return parsed if parsed is not None and parsed[1] in RESID_POINTS else None


def hook_layer_of(hook_name: str) -> int:
    """The block index in a hook name (``blocks.3.hook_resid_post`` -> 3)."""
    parsed = parse_hook_name(hook_name)
    if parsed is None:
        raise UserError(f"cannot tell the layer of hook {hook_name!r}; expected blocks.N.<hook>")
    return parsed[0]
