"""JSON that a user or an earlier run hands in, parsed so that no file can crash dsg.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) on deeply nested input, and it
accepts ``"\\ud800"``, a lone surrogate that is not text: the string it returns fails later,
far from the file, when dsg hashes or writes it. :func:`loads` turns both into ``ValueError``
naming the problem, so every reader reports a bad file with the one-line error it already
gives for malformed JSON.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 100
"""Deepest nesting accepted. dsg's own files nest a few levels; a model's or SAE's config a few
more."""


def loads(text: str) -> Any:
    """``json.loads``, with a ``ValueError`` for nesting deeper than :data:`MAX_DEPTH` and for
    strings (values or keys) holding a lone surrogate."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Walk ``value`` without recursion: its depth and every string in it."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key in item:
                _check_text(key)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise ValueError(
            f"a string holds a lone surrogate (\\u{code:04x}), which is not text"
        ) from None
