"""How every model loader reads a model: transformers' own classes only, quietly, and with hub
lookups that fail at once when the hub cannot be reached.

No code of the model's own: a model folder or hub repository whose ``config.json`` or
``tokenizer_config.json`` has an ``auto_map`` names Python files that transformers would import
(after asking "run the custom code? [y/N]" on stdin, which ``yes | dsg ...`` answers). Running
them would run a stranger's code on the user's machine, and a forward pass of foreign code can
route around the guardrail's hook. So every load passes ``trust_remote_code=False`` and first
calls :func:`refuse_custom_code`, which names the problem in one line before anything loads.

No progress bars and no retry lines: reading a local folder is quick, and transformers'
weight-loading bar or huggingface_hub's retry lines would sit on stderr beside dsg's own progress
and its one-line errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsg.errors import UserError

# the files in which transformers looks for an auto_map (the model's, the tokenizer's)
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json")


def _model_file(reference: str | Path, name: str) -> Path | None:
    """``name`` in a model folder, or in the local hub cache of a hub id; None when absent (an
    uncached hub id is then loaded with ``trust_remote_code=False``, which imports no code)."""
    folder = Path(reference)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(reference), name)
    except ValueError:  # not a valid repo id either; the loader reports it
        return None
    return Path(cached) if isinstance(cached, str) else None


def refuse_custom_code(reference: str | Path) -> None:
    """A :class:`UserError` when the model or tokenizer at ``reference`` (a folder or hub id)
    names Python code of its own (``auto_map``); dsg never runs it."""
    for name in CODE_NAMING_FILES:
        path = _model_file(reference, name)
        if path is None:
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # a damaged file: the loader that reads it reports it as one line
        if isinstance(content, dict) and "auto_map" in content:
            raise UserError(
                f"model {str(reference)!r} ships Python code of its own (auto_map in its "
                f"{name}); dsg never runs a model's own code. Use a model whose architecture "
                "transformers implements (if it does, delete auto_map from a copy of the folder)"
            )


def refuse_trusting_code(options: dict[str, Any]) -> None:
    """A UserError when a harness's model arguments ask to run the model's own code
    (``trust_remote_code`` true); the guarded model types load transformers' own classes only."""
    if options.get("trust_remote_code") not in (None, False):
        raise UserError(
            "a guarded model never runs the model's own code: drop trust_remote_code from the "
            "model arguments and use a model whose architecture transformers implements"
        )


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the duration, restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


HUB_PROBE_SECONDS = 3.0
"""How long the hub's host may take to accept a connection before dsg treats it as unreachable."""

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, or no connection to its host),
    or None when it can. Behind a proxy dsg cannot tell, so it says the hub is reachable."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE)"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as exc:
        return f"the hub cannot be reached: {exc.strerror or exc or type(exc).__name__}"
    return None


@contextmanager
def hub_lookups_for(reference: str | Path) -> Iterator[str | None]:
    """:func:`hub_lookups` around loading ``reference``; a local folder needs no hub."""
    if Path(reference).is_dir():
        yield None
        return
    with hub_lookups() as reason:
        yield reason


@contextmanager
def hub_lookups() -> Iterator[str | None]:
    """Yields why the hub cannot be reached (None when it can). Meanwhile, when it cannot, the
    hub is in offline mode: a cached file loads from the cache and a missing one fails at once,
    instead of after huggingface_hub's retries (about 23 s, printed line by line)."""
    from huggingface_hub import constants

    reason = hub_unreachable()
    was_offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = was_offline or reason is not None
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = was_offline
