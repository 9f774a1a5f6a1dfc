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
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from dsg.core.errors import UserError
from dsg_runtime.atomic import (
    atomic_write,
    canonical_json,
    file_sha256,
    is_live_temporary,
    json_sha256,
    read_json,
    read_tensors,
    write_failed,
    write_json,
    write_tensors,
)

__all__ = [
    "META_FILE",
    "RunDir",
    "artifact_key",
    "atomic_write",
    "canonical_json",
    "check_intact",
    "check_kind",
    "check_writable",
    "complete_or_absent",
    "discard",
    "file_sha256",
    "fingerprint_texts",
    "json_sha256",
    "keyed_folder",
    "publish",
    "read_json",
    "read_tensors",
    "write_failed",
    "write_json",
    "write_tensors",
]

META_FILE = "meta.json"
FILES_FIELD = "files"
DIGEST_FIELD = "sha256"


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


def discard(folder: Path, marker: str = META_FILE) -> None:
    """Remove an unfinished artifact: ``marker`` first, so the folder reads as incomplete at
    once, then its other files, keeping a live writer's temporary files; the folder goes too
    once empty."""
    if not folder.is_dir():
        return
    (folder / marker).unlink(missing_ok=True)
    for path in folder.iterdir():
        if (path.is_file() or path.is_symlink()) and not is_live_temporary(path):
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


def keyed_folder(
    parent: Path,
    kind: str,
    version: int,
    data: dict[str, Any],
    unkeyed: Collection[str],
    **more: Any,
) -> Path:
    """``{parent}/{key}``: one run's output folder. The key hashes the run's settings in
    ``data`` (bar ``unkeyed``, those that choose only where it runs), its inputs and ``more``,
    as a job's key does."""
    settings = {k: v for k, v in data["settings"].items() if k not in unkeyed}
    inputs = {**more, "settings": settings, "inputs": data["inputs"]}
    return parent / artifact_key(kind, version, inputs)


def publish(
    data: dict[str, Any],
    own: Path,
    top: Path,
    files: tuple[str, str],
    draw: Callable[[dict[str, Any], Path], Any],
) -> Path:
    """Write a run's own folder (its plot drawn by ``draw(data, path)``, then its JSON, which
    marks it complete), then copy both to ``top`` as the latest; return the run's own JSON.
    ``files``: the JSON's and the plot's names."""
    json_name, plot_name = files
    with complete_or_absent(own, json_name):
        draw(data, own / plot_name)
        write_json(own / json_name, data)
    write_json(top / json_name, data)
    atomic_write(top / plot_name, lambda target: shutil.copyfile(own / plot_name, target))
    return own / json_name


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
        sha256 of every other file in the folder and of its own content. A failed write leaves
        no empty folder behind (an artifact whose only file is ``meta.json`` has no
        :meth:`building` block to clear it)."""
        folder = self.folder(stage, key)
        files = {
            path.name: file_sha256(path)
            for path in sorted(folder.iterdir() if folder.is_dir() else [])
            if path.is_file() and path.name != META_FILE and not path.name.startswith(".")
        }
        meta = {"stage": stage, "version": version, "key": key, "inputs": inputs, **(extra or {})}
        meta[FILES_FIELD] = files
        meta[DIGEST_FIELD] = json_sha256(meta)
        try:
            write_json(folder / META_FILE, meta)
        except BaseException:
            with contextlib.suppress(OSError):  # not empty: the stage's own files stay
                folder.rmdir()
            raise
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
