"""Reading an attack's results (per-set counts, every cached answer) and its prompts' text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsg.stages.attack import attack


def counts(entry: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {name: (c["correct"], c["total"]) for name, c in entry["counts"].items()}


def all_scores(out: Path) -> dict[str, Any]:
    """Every cached attack answer of a run directory, by its key."""
    found = {}
    for meta in (out / attack.STAGE).glob("*/meta.json"):
        data = json.loads(meta.read_text())
        found[data["key"]] = data["scores"]
    return found


def joined(tokenizer: Any, ids: Any) -> str:
    """The prompt a character tokenizer's ids spell."""
    return "".join(tokenizer.convert_ids_to_tokens(list(ids)))
