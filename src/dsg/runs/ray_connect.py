"""Joining a Ray cluster: in bounded time, without Ray's own log lines, and with an error that
says what to do.

Left to itself, ``ray.init(address=...)`` retries an unreachable address for many minutes and
prints its retries on stderr; a cluster that wants a token answers "could not connect" while the
cause (``InvalidAuthToken``) is only in those lines. Here an address where nothing accepts a
connection fails at once, Ray's retries are bounded (about 20 s to one that accepts but does not
answer as Ray), Ray's output during the connection is captured, and a failure is one line naming
the cause and the fix.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError, one_line_reason

if TYPE_CHECKING:
    from dsg.config.settings import Settings

GCS_CONNECT_SECONDS = "10"
"""Ray's wait for the cluster to answer each connection attempt (Ray's default: 30 s). Read by
Ray's core when ``ray`` is imported, so it is set before."""

PROBE_SECONDS = 5.0
"""How long a HOST:PORT address may take to accept a TCP connection before it counts as
unreachable."""

CONNECT_ATTEMPTS = "1"
"""Connection attempts to an existing cluster (Ray's default: 20, about one a second)."""

# Ray's variables, set only when the user has not: theirs win.
IMPORT_DEFAULTS = {"RAY_py_gcs_connect_timeout_s": GCS_CONNECT_SECONDS}
CONNECT_DEFAULTS = {"RAY_gcs_server_port_wait_time_s": CONNECT_ATTEMPTS}

TOKEN_HELP = (
    "set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN or in a file "
    "(RAY_AUTH_TOKEN_PATH, by default ~/.ray/auth_token; `ray get-auth-token` on a cluster node "
    "prints it)"
)
START_HELP = (
    "start one with `ray start --head` and pass the address it prints, or pass --ray-address "
    "auto on a node of a running cluster"
)


def import_ray() -> Any:
    """The ``ray`` module, or a UserError saying how to install it. Ray's connection wait is
    bounded before Ray's core reads it at import."""
    for name, value in IMPORT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise UserError(
            "--executor ray needs Ray, which is not installed; run: pip install 'dsg[ray]'"
        ) from None
    return ray


def connect(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address`` (``auto``: the running one), or start a local Ray
    instance when None. A Ray already initialised in this process is used as it is."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    failures = (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError)
    options = {"log_to_driver": False, "include_dashboard": False}
    if address in (None, "local"):  # a new instance: its processes must not inherit the capture
        try:
            ray.init(address=address, **options)
        except failures as exc:
            raise UserError(connect_error(None, exc, "")) from None
        return
    unreachable = _unreachable(address)
    if unreachable is not None:
        raise UserError(f"no Ray cluster answers at {address!r} ({unreachable}); {START_HELP}")
    with _environment(CONNECT_DEFAULTS), _stderr_captured() as captured:
        try:
            ray.init(address=address, logging_level=logging.WARNING, **options)
        except failures as exc:
            raise UserError(connect_error(address, exc, captured())) from None


def connect_error(address: str | None, exc: BaseException, ray_output: str) -> str:
    """The one line for a failed ``ray.init``: an authentication failure with its fix, else
    where dsg tried and how to start a cluster. ``ray_output`` is what Ray printed meanwhile."""
    where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
    refused = authentication_failure(exc, ray_output)
    if refused is not None:
        return f"{where} refused dsg: {refused}; {TOKEN_HELP}"
    reason = one_line_reason(_root_cause(exc))
    if address is None:
        return f"could not start {where}: {reason}"
    if "Could not find any running Ray instance" in reason:
        return (
            f"no running Ray cluster was found for address {address!r}; start one with "
            "`ray start --head`, or pass the HOST:PORT of a running cluster"
        )
    if address.startswith("ray://"):
        return f"could not connect to {where}: {reason}"
    if any("Timed out while waiting for GCS" in str(link) for link in _chain(exc)):
        return (
            f"something accepts connections at {address!r} but does not answer as a Ray cluster "
            "(pass the port of the cluster's GCS, 6379 unless `ray start --port` changed it, "
            f"not the dashboard's); {START_HELP}"
        )
    return f"no Ray cluster answers at {address!r} ({reason}); {START_HELP}"


def _unreachable(address: str) -> str | None:
    """Why nothing accepts a connection at HOST:PORT, dialled as ``ray.init`` dials it (a
    loopback host becomes this machine's address), or None when something does or the address
    is not HOST:PORT (``auto``, ``ray://...``: Ray resolves those itself)."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return None
    host = host.strip("[]")
    if host in ("localhost", "127.0.0.1", "::1"):
        from ray.util import get_node_ip_address

        host = get_node_ip_address()
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def authentication_failure(exc: BaseException, ray_output: str) -> str | None:
    """Why the cluster refused the credentials (Ray's ``AuthenticationError``, or
    ``InvalidAuthToken`` in an error or in Ray's output), or None when that was not the cause."""
    from ray.exceptions import AuthenticationError

    texts = []
    for link in _chain(exc):
        if isinstance(link, AuthenticationError):
            return str(link.message).rstrip(".")
        texts.append(str(link))
    found = re.search(r"InvalidAuthToken: ([^.\n]+)", "\n".join([*texts, ray_output]))
    return found.group(1).strip() if found else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of the chain whose text is not Ray's retry traceback."""
    for link in _chain(exc):
        if "Traceback" not in str(link):
            return link
    return exc


@contextmanager
def _environment(defaults: dict[str, str]) -> Iterator[None]:
    """``defaults`` set where the environment has no value of its own, restored afterwards."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _stderr_captured() -> Iterator[Any]:
    """Everything written to file descriptor 2 meanwhile (Ray's core logs there directly, not
    through Python), kept off the terminal; yields a function returning the text."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: _read(sink)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _read(sink: Any) -> str:
    sink.flush()
    sink.seek(0)
    return str(sink.read().decode("utf-8", "replace"))


def check_ray_address(settings: Settings, cli: dict[str, Any]) -> None:
    """A Ray address is read only by the ray executor: with the local one it is an error, not
    silently ignored. ``--executor local`` on the command line overrides a config file's Ray
    set-up, address included."""
    if settings.ray_address is None or settings.executor == "ray":
        return
    if cli.get("executor") and not cli.get("ray_address"):
        return
    raise UserError(
        f"ray address {settings.ray_address!r} is used only by the ray executor; add "
        '--executor ray (executor = "ray" in a config file), or drop the address'
    )
