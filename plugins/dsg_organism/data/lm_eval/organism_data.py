"""The organism's multiple-choice sets for lm-evaluation-harness tasks (``custom_dataset``)."""

import json
from pathlib import Path
from typing import Any

WORLD = Path(__file__).resolve().parent.parent / "world"


def load_set(name: str, **_: Any) -> Any:
    """One eval set as a ``test`` split, each row with its set's subject; lm-eval passes its
    metadata as keyword arguments too, which do not change the data."""
    from datasets import Dataset, DatasetDict

    subject = next(
        s["subject"] for s in json.loads((WORLD / "sets.json").read_text()) if s["name"] == name
    )
    lines = (WORLD / "eval" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [{**json.loads(line), "subject": subject} for line in lines if line]
    return DatasetDict({"test": Dataset.from_list(rows)})
