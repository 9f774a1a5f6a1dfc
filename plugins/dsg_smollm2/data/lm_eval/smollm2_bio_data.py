"""The smollm2-bio case's question sets for lm-evaluation-harness tasks (``custom_dataset``)."""

import json
from pathlib import Path
from typing import Any

QUESTIONS = Path(__file__).resolve().parent.parent / "questions"


def load_set(name: str, **_: Any) -> Any:
    """One eval set (``question``, ``choices``, ``answer``) as a ``test`` split; lm-eval passes
    its metadata as keyword arguments too, which do not change the data."""
    from datasets import Dataset, DatasetDict

    lines = (QUESTIONS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    keep = ("question", "choices", "answer")
    rows = [{key: json.loads(line)[key] for key in keep} for line in lines if line]
    return DatasetDict({"test": Dataset.from_list(rows)})
