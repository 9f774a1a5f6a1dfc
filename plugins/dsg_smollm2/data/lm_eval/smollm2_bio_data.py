"""The smollm2-bio case's question sets for lm-evaluation-harness tasks (``custom_dataset``)."""

import json
from pathlib import Path
from typing import Any

QUESTIONS = Path(__file__).resolve().parent.parent / "questions"
SUBJECTS = {
    "smollm2-biology": "biology",
    "geography": "geography",
    "history": "history",
    "people": "famous people",
}
"""Each set's subject, as the case names it (dsg_smollm2.case.SETS)."""


def load_set(name: str, **_: Any) -> Any:
    """One eval set as a ``test`` split, each row with its set's subject; lm-eval passes its
    metadata as keyword arguments too, which do not change the data."""
    from datasets import Dataset, DatasetDict

    lines = (QUESTIONS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [
        {**{k: v for k, v in json.loads(line).items() if k != "topic"}, "subject": SUBJECTS[name]}
        for line in lines
        if line
    ]
    return DatasetDict({"test": Dataset.from_list(rows)})
