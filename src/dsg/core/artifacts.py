"""The run directory: artifacts keyed by everything that produced them, written atomically.

Layout: ``{out}/{stage}/{key}/`` holds a ``meta.json`` (stage, format version, key, the inputs
that made it) beside the stage's files (safetensors for tensors, JSON for small results).
A changed input gives a new key and so a new directory; a stale artifact is never reused.

``meta.json`` also records the sha256 of every other file in the folder and a sha256 of its own
content, both checked whenever the artifact is reused: an edited, truncated, deleted or swapped
file is refused instead of silently feeding the next stage.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dsg import safe_json
from dsg.errors import UserError

META_FILE = "meta.json"
FILES_FIELD = "files"
DIGEST_FIELD = "sha256"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal inputs give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def artifact_key(stage: str, version: int, inputs: dict[str, Any]) -> str:
    """A short hash of the stage, its format version and every input that affects it."""
    payload = canonical_json({"stage": stage, "version": version, "inputs": inputs})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fingerprint_texts(texts: list[str]) -> str:
    """A content hash of a corpus, so a changed dataset changes every key built on it."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def json_sha256(value: Any) -> str:
    """The sha256 of a JSON value as it reads back from disk (tuples as lists, keys as strings),
    so a digest taken before writing matches one taken after reading."""
    as_read = json.loads(json.dumps(value, default=str))
    return hashlib.sha256(canonical_json(as_read).encode()).hexdigest()


def check_writable(directory: Path, hint: str) -> None:
    """Fail before any work if ``directory`` cannot be created and written; creates nothing.

    Probes the directory itself, or the nearest ancestor that exists (where it would be made).
    A name too long for the file system, a symbolic link that leads nowhere (dangling, or a
    loop) and a file in the way are refused here, not after the run's work.
    """
    reason = _why_unwritable(directory.absolute())
    if reason is not None:
        raise UserError(f"{directory} is not writable ({reason}); {hint}")


def _why_unwritable(directory: Path) -> str | None:
    existing = directory
    try:
        while not existing.exists() and existing != existing.parent:
            if existing.is_symlink():
                return f"{existing} is a symbolic link to nothing: dangling, or a loop"
            existing = existing.parent
    except OSError as exc:  # ENAMETOOLONG: a name, or the whole path, too long
        return exc.strerror or type(exc).__name__
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        tempfile.NamedTemporaryFile(dir=existing, prefix=".probe.", delete=True).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


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


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


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
        except SafetensorError as exc:  # an I/O error names its errno as "(os error N)"
            found = _OS_ERROR.search(str(exc))
            if found is None:
                raise
            code = int(found.group(1))
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


def check_kind(path: Path, *, folder: bool) -> None:
    """Refuse, before any work, a file (or a broken link) where dsg keeps a folder, or a folder
    where it writes a file."""
    try:
        wrong = (path.exists() or path.is_symlink()) and path.is_dir() != folder
    except OSError as exc:
        raise write_failed(path, exc) from None
    if wrong:
        kind = "a folder" if folder else "a file"
        raise UserError(
            f"{path} is in the way: dsg keeps {kind} there; move it away or pass another --out"
        )


def _live_temporary(path: Path) -> bool:
    return _TMP_NAME.match(path.name) is not None and not is_stale_temporary(path)


def discard(folder: Path, marker: str = META_FILE) -> None:
    """Remove an unfinished artifact: ``marker`` first, so the folder reads as incomplete at
    once, then its other files, keeping a live writer's temporary files; the folder goes too
    once empty."""
    if not folder.is_dir():
        return
    (folder / marker).unlink(missing_ok=True)
    for path in folder.iterdir():
        if (path.is_file() or path.is_symlink()) and not _live_temporary(path):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a live writer's file is left
        folder.rmdir()


@contextlib.contextmanager
def complete_or_absent(folder: Path, marker: str) -> Iterator[Path]:
    """Write one artifact into ``folder``, which ``marker`` (written last) marks complete.

    What an interrupted run left there (or the old artifact that ``force`` recomputes) is
    cleared first; if the block fails, what it wrote is removed, so the folder holds a complete
    artifact or nothing."""
    check_kind(folder.parent, folder=True)
    check_kind(folder, folder=True)
    discard(folder, marker)
    try:
        yield folder
    except BaseException:
        discard(folder, marker)
        raise


class RunDir:
    """One run directory; each stage asks it for the folder of a key and checks what it finds."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure_writable(self) -> None:
        """Check up front that the run directory can be written; it is made by the first write,
        so a run that fails before writing anything leaves no empty folder behind."""
        check_writable(self.root, "pass a writable --out")

    def folder(self, stage: str, key: str) -> Path:
        """``{root}/{stage}/{key}``; a file or a broken link where a folder belongs is refused."""
        folder = self.root / stage / key
        check_kind(folder.parent, folder=True)
        check_kind(folder, folder=True)
        return folder

    def building(self, stage: str, key: str) -> contextlib.AbstractContextManager[Path]:
        """The folder of an artifact about to be computed, as :func:`complete_or_absent`."""
        return complete_or_absent(self.folder(stage, key), META_FILE)

    def find(self, stage: str, version: int, key: str, *, force: bool = False) -> Path | None:
        """The folder of a finished, intact artifact, or None; a foreign, corrupted or edited
        one is an error. With ``force`` it is None: the caller recomputes and overwrites it."""
        folder = self.folder(stage, key)
        if force:
            return None
        meta_path = folder / META_FILE
        if not meta_path.exists():
            return None
        meta = read_json(meta_path)
        if (
            not isinstance(meta, dict)
            or meta.get("stage") != stage
            or meta.get("key") != key
            or meta.get("version") != version
        ):
            raise UserError(
                f"{folder} holds an artifact that does not match its name (foreign, edited or "
                "from another dsg version); delete that folder and run again"
            )
        check_intact(folder, meta)
        return folder

    def commit(
        self,
        stage: str,
        version: int,
        key: str,
        inputs: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``meta.json`` last: its presence marks the artifact complete. It records the
        sha256 of every other file in the folder and of its own content."""
        folder = self.folder(stage, key)
        files = {
            path.name: file_sha256(path)
            for path in sorted(folder.iterdir() if folder.is_dir() else [])
            if path.is_file() and path.name != META_FILE and not path.name.startswith(".")
        }
        meta = {"stage": stage, "version": version, "key": key, "inputs": inputs, **(extra or {})}
        meta[FILES_FIELD] = files
        meta[DIGEST_FIELD] = json_sha256(meta)
        write_json(folder / META_FILE, meta)
        return folder


def check_intact(folder: Path, meta: dict[str, Any]) -> None:
    """Every file ``meta.json`` lists is there with its recorded hash, and ``meta.json`` itself
    is as written; otherwise a UserError that says how to recover."""
    recorded = meta.get(DIGEST_FIELD)
    files = meta.get(FILES_FIELD)
    if not isinstance(recorded, str) or not isinstance(files, dict):
        problem = f"{META_FILE} has no content hashes (written by an older dsg?)"
    elif json_sha256({k: v for k, v in meta.items() if k != DIGEST_FIELD}) != recorded:
        problem = f"{META_FILE} was edited"
    else:
        problem = None
        for name, digest in sorted(files.items()):
            path = folder / str(name)
            if not path.is_file():
                problem = f"{name} is missing"
            elif file_sha256(path) != digest:
                problem = f"{name} was edited, truncated or replaced"
            if problem:
                break
    if problem:
        raise UserError(
            f"{folder} changed after dsg wrote it ({problem}); rerun with --force to recompute "
            "it, or delete that folder"
        )
