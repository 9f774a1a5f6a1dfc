"""What a path a user hands in turns out to be, so that a message names the real fault: a
missing file, a directory, or something that is not a regular file at all (``/dev/null``, a
pipe, a socket), which cannot hold a corpus or a config."""

from __future__ import annotations

from pathlib import Path


def file_problem(path: Path) -> str | None:
    """None for a regular file (or a link to one), else what is wrong, to follow the path in a
    message: ``does not exist``, ``is a directory, not a regular file``, ``is not a regular
    file (...)``."""
    try:
        if path.is_file():
            return None
        if path.is_dir():
            return "is a directory, not a regular file"
        if not path.exists():
            return "does not exist"
    except OSError as exc:  # a name too long, a loop of links
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    return "is not a regular file (a device, pipe or socket)"
