"""How every model loader reads a model: transformers' own classes only, quietly, and with hub
lookups that fail at once when the hub cannot be reached.

No code of the model's own: every load passes ``trust_remote_code=False`` and first calls
:func:`refuse_custom_code` (:mod:`dsg_runtime.remote_code`, shared with the guarded harness
models).

No progress bars and no retry lines: reading a local folder is quick, and transformers'
weight-loading bar or huggingface_hub's retry lines would sit on stderr beside dsg's own progress
and its one-line errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dsg_runtime.remote_code import refuse_custom_code, refuse_trusting_code

__all__ = [
    "hub_lookups",
    "hub_lookups_for",
    "no_progress_bars",
    "refuse_custom_code",
    "refuse_trusting_code",
]


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
