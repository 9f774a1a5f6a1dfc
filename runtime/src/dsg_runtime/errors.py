"""Errors a user can cause. dsg's command line turns them into one line on stderr and exit code
2; a harness shows the message as it is."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: an unknown name, a bad value, a missing file.

    The message says what was wrong and what to do about it; no traceback is shown.
    """


class GuardrailStateError(UserError):
    """The guardrail cannot tell what a forward pass holds (a prompt or a continuation, which
    tokens it attends), so it refuses to run it rather than run it unguarded."""
