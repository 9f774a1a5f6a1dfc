"""Files written atomically and read defensively: a reader never sees a half-written file, and a
damaged one is a one-line :class:`UserError`, not a traceback.

Each write goes to a temporary file beside its target (named after the writer's process and
host) and is then renamed into place; temporaries that killed writers left behind are removed
by the next write in the same folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsg_runtime import safe_json
from dsg_runtime.errors import UserError


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal inputs give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def json_sha256(value: Any) -> str:
    """The sha256 of a JSON value as it reads back from disk (tuples as lists, keys as strings),
    so a digest taken before writing matches one taken after reading."""
    as_read = json.loads(json.dumps(value, default=str))
    return hashlib.sha256(canonical_json(as_read).encode()).hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


TMP_SUFFIX = ".tmp"
STALE_FOREIGN_SECONDS = 24 * 3600
"""A temporary file of a writer on another host is stale once unchanged this long (a live
writer's file changes as it is written; a single write takes minutes at most)."""
_TMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)\.[^.]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32]


def _tmp_prefix(name: str) -> str:
    """``.{name}.{pid}@{host}.``: who writes a temporary file is in its name, so a later run can
    tell a dead writer's leftover from a live one's file."""
    return f".{name}.{os.getpid()}@{_host()}."


def _alive(pid: int) -> bool:
    if os.name == "nt":  # there os.kill ends the process; assume alive, never remove
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def is_stale_temporary(path: Path) -> bool:
    """A temporary file of :func:`atomic_write` whose writer is gone: on this host a process
    that no longer exists, on another host one unchanged for a day."""
    found = _TMP_NAME.match(path.name)
    if found is None:
        return False
    if found["host"] == _host():
        return not _alive(int(found["pid"]))
    try:
        return time.time() - path.lstat().st_mtime > STALE_FOREIGN_SECONDS
    except OSError:
        return False


def is_live_temporary(path: Path) -> bool:
    """A temporary file of :func:`atomic_write` whose writer may still be writing it."""
    return _TMP_NAME.match(path.name) is not None and not is_stale_temporary(path)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete what writers killed mid-write left in ``folder``; a live writer's file stays."""
    try:
        names = [p for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX)]
    except OSError:
        return
    for path in names:
        if is_stale_temporary(path):
            path.unlink(missing_ok=True)


def _in_the_way(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists but is not a folder (or a broken link)."""
    try:
        for parent in reversed(path.parents):
            if parent.is_symlink() and not parent.exists():
                return parent
            if parent.exists() and not parent.is_dir():
                return parent
    except OSError:
        pass
    return None


def write_failed(path: Path, exc: OSError) -> UserError:
    """An OSError while writing ``path`` as the user's one line: what failed and what to do."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):
        blocker = _in_the_way(path)
        where = f"{blocker} is not a folder" if blocker else reason
        return UserError(f"cannot write {path}: {where}; move it away or pass another --out")
    advice = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EISDIR: "a folder stands where dsg writes this file; move it away",
        errno.ENAMETOOLONG: "use a shorter path",
        errno.EACCES: "make it writable",
        errno.EPERM: "make it writable",
        errno.EROFS: "make it writable",
    }.get(exc.errno or 0, "check the disk")
    return UserError(f"cannot write {path} ({reason}); {advice}, or pass another --out")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place, so a
    reader never sees a half-written file. A file system error (disk full, a folder or file
    in the way, a name too long) is a UserError naming ``path``, and the temporary file is
    removed; so are those that killed writers left in the same folder."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=_tmp_prefix(path.name), suffix=TMP_SUFFIX
        )
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain write would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=2, default=str) + "\n"))


_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")
"""The errno in a safetensors I/O error: ``(os error 28)`` in newer releases, ``IoError(Os {
code: 28, ...})`` in older ones."""


def write_tensors(
    path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}

    def save(target: Path) -> None:
        try:
            save_file(contiguous, str(target), metadata=metadata)
        except SafetensorError as exc:  # an I/O error names its errno (_OS_ERROR)
            found = _OS_ERROR.search(str(exc))
            if found is None:
                raise
            code = int(found.group(1) or found.group(2))
            raise OSError(code, os.strerror(code)) from None

    atomic_write(path, save)


def read_json(path: Path) -> Any:
    try:
        return safe_json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(
            f"{path} is unreadable or corrupted ({exc}); delete it and run again"
        ) from None


def read_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(
            f"{path} is unreadable or corrupted ({exc}); delete it and run again"
        ) from None
