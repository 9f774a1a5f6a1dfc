"""A GGUF file converted once into a transformers model folder, cached by the file's sha256.

transformers dequantizes the GGUF into float32 weights (16 to 22 s for SmolLM2-135M on two CPU
cores); the folder it saves is then loaded like any local checkpoint, by either backend. The
folder is built under a temporary name and renamed into place, so it is complete or absent: a
conversion that was killed leaves a temporary folder that the next conversion removes.

The cache is ``$DSG_GGUF_CACHE`` when set, else ``$XDG_CACHE_HOME/dsg/gguf``, else
``~/.cache/dsg/gguf``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from dsg.api import UserError, no_progress_bars, one_line_reason, parse_json
from dsg_gguf.sources import GGUFSource
from dsg_runtime.atomic import is_stale_temporary, write_json

CACHE_VARIABLE = "DSG_GGUF_CACHE"
SOURCE_FILE = "gguf-source.json"
"""Written last into a converted folder: where it came from (and that it is complete)."""


def cache_root() -> Path:
    """Where converted folders live (see the module docstring)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dsg" / "gguf"


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def converted_folder(source: GGUFSource, gguf: Path, digest: str) -> Path:
    """The transformers folder of ``gguf`` (whose sha256 is ``digest``), converting it first
    when the cache has none."""
    root = cache_root()
    folder = root / f"{source.name}-{digest[:16]}"
    if _complete(folder, digest):
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)
        host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32]
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.{os.getpid()}@{host}.",
                                    suffix=".tmp"))  # fmt: skip
    except OSError as exc:
        raise UserError(
            f"cannot write the model cache {root} ({exc.strerror or exc}); set {CACHE_VARIABLE} "
            "to a writable folder"
        ) from None
    print(
        f"[dsg] converting {gguf.name} into a transformers folder, once: {folder}",
        file=sys.stderr,
    )
    try:
        _convert(gguf, tmp)
        write_json(tmp / SOURCE_FILE, _record(source, gguf, digest))
        _readable(tmp)
        if folder.exists():  # an unfinished or foreign folder in the way
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _complete(folder, digest):  # another process converted it first
            return folder
        raise UserError(
            f"cannot write the converted model to {folder} ({exc.strerror or exc}); free some "
            f"space or set {CACHE_VARIABLE} to another folder"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _readable(folder: Path) -> None:
    """The permissions a plain write would give (a temporary folder is private to its maker)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _record(source: GGUFSource, gguf: Path, digest: str) -> dict[str, str]:
    return {
        "name": source.name,
        "distribution": source.distribution,
        "file": source.file,
        "gguf_sha256": digest,
        "gguf_bytes": str(gguf.stat().st_size),
    }


def _complete(folder: Path, digest: str) -> bool:
    """A folder this module finished for the same GGUF."""
    try:
        recorded = parse_json((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("gguf_sha256") == digest


def _remove_stale(root: Path) -> None:
    """Temporary folders of conversions whose process is gone."""
    for path in root.glob(".*.tmp"):
        if path.is_dir() and is_stale_temporary(path):
            shutil.rmtree(path, ignore_errors=True)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers and save model and tokenizer into ``out``."""
    try:
        import gguf as _gguf  # noqa: F401 - transformers reads GGUF files through it
    except ModuleNotFoundError:
        raise UserError(
            "converting a GGUF model needs the gguf package: pip install gguf"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # the dequantizing loop's own tqdm bar ignores transformers' switch: silenced here
        with no_progress_bars(), contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
            )
            tokenizer = AutoTokenizer.from_pretrained(
                gguf.parent, gguf_file=gguf.name, trust_remote_code=False
            )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(
            f"transformers could not read {gguf} ({one_line_reason(exc)}); reinstall the "
            "distribution that ships it"
        ) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain float32 now; save refuses otherwise
        quantizer.remove_quantization_config(model)
    with no_progress_bars():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
