"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2.

``UserError`` itself is dsg-runtime's, so the errors the guardrail runtime raises (a bad bundle,
a refused generation) are caught by the CLI like dsg's own."""

from __future__ import annotations

from dsg_runtime.errors import UserError

__all__ = ["PluginConflict", "UserError", "one_line", "one_line_reason", "unreadable_file_errors"]


class PluginConflict(UserError):
    """Two plugins registered the same name in one registry."""


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
