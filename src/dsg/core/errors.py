"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2.

``UserError`` itself is dsg-runtime's, so the errors the guardrail runtime raises (a bad bundle,
a refused generation) are caught by the CLI like dsg's own."""

from __future__ import annotations

from typing import Any

from dsg_runtime.errors import UserError

__all__ = [
    "PluginConflict",
    "UserError",
    "excerpt",
    "one_line",
    "one_line_reason",
    "shortened",
    "unreadable_file_errors",
]

EXCERPT_CHARS = 60
"""How much of a value a message quotes."""
MESSAGE_CHARS = 1000
"""The longest error line the command line prints; a longer one keeps its start and its end."""


class PluginConflict(UserError):
    """Two plugins registered the same name in one registry."""


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, with its full size: a message names a value
    a user gave, it does not echo a 10 MB string or a 20,000-element array back."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        # repr() refuses an int of over 4300 digits; its size is known without it
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, list | tuple | dict):
        size = f"{len(value):,} items"
    else:
        size = f"{len(value) if isinstance(value, str) else len(text):,} characters"
    return f"{text[:limit]}… ({size})"


def shortened(message: str, limit: int = MESSAGE_CHARS) -> str:
    """``message`` whole if it is at most ``limit`` characters, else its start and its end (the
    part that says what to do) around an ellipsis."""
    if len(message) <= limit:
        return message
    tail = limit // 4
    return f"{message[: limit - tail]} … {message[-tail:]}"


def one_line_reason(exc: BaseException) -> str:
    """The first line of an exception, without a trailing full stop, to end a one-line error."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(".")


def one_line(exc: BaseException) -> str:
    """An exception as one line: the type (unless it is a UserError) and the message's first
    line."""
    reason = one_line_reason(exc)
    if isinstance(exc, UserError) or reason == type(exc).__name__:
        return reason
    return f"{type(exc).__name__}: {reason}"


def unreadable_file_errors() -> tuple[type[Exception], ...]:
    """What loading a model or SAE raises when a file on disk is missing, truncated or malformed
    (a bad config.json, cut-off safetensors): the user's to fix, so reported as one line."""
    from huggingface_hub import errors as hub_errors
    from safetensors import SafetensorError

    # transformers validates config.json fields through huggingface_hub's strict dataclasses
    strict = getattr(hub_errors, "StrictDataclassError", None)
    return (OSError, ValueError, KeyError, SafetensorError, *([strict] if strict else []))
