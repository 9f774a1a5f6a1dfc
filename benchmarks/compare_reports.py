"""Do two runs report the same thing? Compare two ``report.json`` (or ``attack.json``) files
field by field, leaving out what differs between runs of the same inputs: wall-clock timings,
the relearn attack's ``seconds``, and paths of the run folders.

    python benchmarks/compare_reports.py OLD/report.json NEW/report.json

Used to check that a change meant to keep behaviour (a refactor) leaves the organism's reports
as they were: run the same command on both commits, then compare. Prints every differing field
and exits 1 when there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RUN_SPECIFIC = {"timings", "seconds", "out"}
"""Keys whose values are measured or name where a run was written (``settings.out``), not
computed: their contents are not compared."""


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """The paths at which ``new`` differs from ``old`` (dicts by key, lists by position)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            if key in RUN_SPECIFIC:
                continue
            if key not in old or key not in new:
                found.append(f"{where}/{key}: only in {'new' if key not in old else 'old'}")
            else:
                found += differences(old[key], new[key], f"{where}/{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in differences(a, b, f"{where}[{i}]")
        ]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    old, new = (json.loads(Path(p).read_text()) for p in sys.argv[1:])
    found = differences(old, new)
    print("\n".join(found) if found else "same (timings aside)")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
