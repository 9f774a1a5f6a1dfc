"""``python -m dsg.cli.config_docs docs/config.md``: rewrite the settings tables of the page
(:mod:`dsg.config.docs`) with dsg's settings and those of the installed plugins."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from dsg.api.plugins import registry
from dsg.config.docs import with_tables
from dsg.core.artifacts import atomic_write


def main(argv: list[str]) -> None:
    plugin = registry().settings
    for name in argv:
        path = Path(name)
        text = with_tables(path.read_text(), plugin)
        atomic_write(path, functools.partial(Path.write_text, data=text))


if __name__ == "__main__":
    main(sys.argv[1:])
