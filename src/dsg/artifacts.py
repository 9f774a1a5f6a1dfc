"""The run directory: artifacts keyed by everything that produced them, written atomically.

Layout: ``{out}/{stage}/{key}/`` holds a ``meta.json`` (stage, format version, key, the inputs
that made it) beside the stage's files (safetensors for tensors, JSON for small results).
A changed input gives a new key and so a new directory; a stale artifact is never reused.

``meta.json`` also records the sha256 of every other file in the folder and a sha256 of its own
content, both checked whenever the artifact is reused: an edited, truncated, deleted or swapped
file is refused instead of silently feeding the next stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is not a directory"
    else:
        try:
            tempfile.NamedTemporaryFile(dir=existing, prefix=".probe.", delete=True).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
    if reason is not None:
        raise UserError(f"{directory} is not writable ({reason}); {hint}")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place, so a
    reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 files; give the result the permissions a plain write would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=2, default=str) + "\n"))


def write_tensors(
    path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically."""
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(contiguous, str(p), metadata=metadata))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
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


class RunDir:
    """One run directory; each stage asks it for the folder of a key and checks what it finds."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure_writable(self) -> None:
        """Check up front that the run directory can be written; it is made by the first write,
        so a run that fails before writing anything leaves no empty folder behind."""
        check_writable(self.root, "pass a writable --out")

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

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
