"""The smollm2-bio case's forget and retain corpora: WordNet glosses, shipped with dsg.

WordNet 3.0's licence allows redistribution with its notice (``data/corpora/LICENSE-WordNet``).
A sample of :data:`DOCS_PER_SIDE` documents a side (:func:`dsg_smollm2.subjects.case_documents`)
is shipped, rebuilt by::

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet
    python -m dsg_smollm2.build_corpora --wordnet wordnet --out plugins/dsg_smollm2/data/corpora

The sample is the documents whose sha256 is smallest, in file order, so it does not depend on
the order of the files or on the other documents.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

from dsg.api import UserError
from dsg_runtime.atomic import atomic_write
from dsg_smollm2.subjects import case_documents

CORPORA = Path(__file__).parent / "data" / "corpora"
DOCS_PER_SIDE = 600
"""About 180k SmolLM2 tokens a side: more than the case's statistics read (1,024 rows of 128)."""


def sample(docs: list[str], n: int) -> list[str]:
    """The ``n`` documents of smallest sha256, kept in their order."""
    chosen = set(sorted(docs, key=lambda d: hashlib.sha256(d.encode()).hexdigest())[:n])
    return [doc for doc in docs if doc in chosen]


def build(wordnet: Path, out: Path) -> dict[str, int]:
    """Write ``forget.jsonl`` and ``retain.jsonl`` (one ``{"text": ...}`` a line) into ``out``;
    returns the number of documents of each."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for side, docs in case_documents(wordnet).items():
        chosen = sample(docs, DOCS_PER_SIDE)
        lines = "".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in chosen)
        atomic_write(out / f"{side}.jsonl", partial(Path.write_text, data=lines, encoding="utf-8"))
        counts[side] = len(chosen)
    return counts


def read(side: str) -> list[str]:
    """The shipped documents of one side, in order."""
    path = CORPORA / f"{side}.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [str(json.loads(line)["text"]) for line in lines if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"the shipped corpus {path} is damaged ({exc!r}); reinstall dsg") from None
