"""Where case data comes from: the Hugging Face hub, an offline mirror, or local files.

Cases call :meth:`DataSource.load_dataset` with canonical hub ids. With ``data_dir`` set, a hub id
``owner/name`` is read from ``data_dir/owner/name``, a snapshot of the hub dataset repository,
through the same ``load_dataset(path, config, split=...)`` call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsg.core.errors import UserError, one_line_reason
from dsg.core.files import file_problem
from dsg_runtime import safe_json


class _DropErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextmanager
def _errors_reported_by_dsg() -> Iterator[None]:
    """Silence ``datasets``' own error log lines while it loads: a failure is reported once, as
    dsg's one error line, not twice with a raw log line before it. Warnings still show."""
    handlers = logging.getLogger("datasets").handlers
    drop = _DropErrors()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


def mirror_cache_dir(local: Path) -> str:
    """A ``datasets`` cache folder for one state of one mirrored dataset folder.

    ``datasets`` keys the cache of a local dataset folder by its name and README only, not by its
    path or its data files: two mirrors, or one mirror fetched again at another revision, would
    share a cache entry and every later read would silently return the first one's rows. Keying
    the cache by the folder's path and each file's size and modification time keeps them apart.
    """
    import datasets

    digest = hashlib.sha256(str(local.resolve()).encode())
    for file in sorted(path for path in local.rglob("*") if path.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(local)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "dsg-mirrors" / digest.hexdigest()[:16])


@dataclass(frozen=True)
class DataSource:
    data_dir: Path | None = None
    forget_corpus: Path | None = None
    retain_corpus: Path | None = None

    def load_dataset(
        self, hub_id: str, config: str | None = None, *, split: str, revision: str | None = None
    ) -> Any:
        """``datasets.load_dataset`` on the hub id or its mirror under ``data_dir``."""
        import datasets

        if self.data_dir is not None:
            local = self.data_dir / hub_id
            if not local.is_dir():
                raise UserError(
                    f"dataset {hub_id} is not in the mirror {self.data_dir} (expected {local}); "
                    f"create it with: dsg data mirror --case CASE {self.data_dir}"
                )
            try:
                with _errors_reported_by_dsg():
                    return datasets.load_dataset(
                        str(local), config, split=split, cache_dir=mirror_cache_dir(local)
                    )
            except Exception as exc:  # a damaged or partial mirror: the user's to refetch
                raise UserError(
                    f"could not read dataset {hub_id} ({config or 'default'}, {split}) from the "
                    f"mirror {local}: {type(exc).__name__}: {one_line_reason(exc)}. Fetch it again "
                    f"with: dsg data mirror --case CASE {self.data_dir}"
                ) from None
        try:
            with _errors_reported_by_dsg():
                return datasets.load_dataset(hub_id, config, split=split, revision=revision)
        except Exception as exc:  # network, gated access, missing config: all user-fixable
            raise UserError(
                f"could not load dataset {hub_id} ({config or 'default'}, {split}): "
                f"{type(exc).__name__}: {one_line_reason(exc)}. "
                "Log in with `hf auth login` if it is gated, "
                "or pass --data-dir with an offline mirror"
            ) from None


def read_text_corpus(path: Path) -> list[str]:
    """Documents from a JSONL file with a ``text`` field, or a plain text file (one per line)."""
    problem = file_problem(path)
    if problem is not None:
        raise UserError(f"corpus file {path} {problem}; pass a .jsonl or plain text file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM is not text
    except UnicodeDecodeError as exc:
        raise UserError(
            f"corpus file {path} is not UTF-8 text (byte {exc.start} cannot be decoded); "
            "convert it to UTF-8, e.g. with iconv"
        ) from None
    except OSError as exc:
        raise UserError(f"corpus file {path} cannot be read ({exc.strerror})") from None
    if path.suffix in {".jsonl", ".json"}:
        docs = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                text = safe_json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                text = None
            except ValueError as exc:  # too deep, or a lone surrogate: valid JSON, not text
                raise UserError(f"{path}:{number} cannot be used ({exc}); fix that line") from None
            if not isinstance(text, str):
                raise UserError(f"{path}:{number} is not a JSON object with a string 'text' field")
            docs.append(text)
        return docs
    return [line for line in lines if line.strip()]
