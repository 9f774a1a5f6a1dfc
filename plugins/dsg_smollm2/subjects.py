"""Biology and other subjects in WordNet's glosses: the forget and retain text for SmolLM2.

The forget side is the lexicographer files of anatomy, animals and plants; the retain side is
subjects far from biology (artifacts, people, places, communication, acts, ...). Files that mix
biology with other things (food, substances, states such as diseases, processes, natural
objects, bodily verbs) are on neither side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dsg_smollm2.wordnet import documents

FORGET = ("noun.body", "noun.animal", "noun.plant")
RETAIN = (
    "noun.act", "noun.artifact", "noun.attribute", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.group", "noun.location", "noun.person",
    "noun.possession", "noun.quantity", "noun.relation", "noun.shape", "noun.time",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.contact",
    "verb.creation", "verb.motion", "verb.possession", "verb.social", "verb.stative",
    "adj.all", "adv.all",
)  # fmt: skip
HELD_OUT_PERCENT = 25


def subject_documents(wordnet: Path) -> dict[str, list[str]]:
    """``{"forget": [...], "retain": [...]}``: the documents of each side, in file order."""
    by_file = documents(wordnet, set(FORGET) | set(RETAIN))
    return {
        side: [doc for lexname in names for doc in by_file.get(lexname, [])]
        for side, names in (("forget", FORGET), ("retain", RETAIN))
    }


def held_out_split(docs: list[str]) -> tuple[list[str], list[str]]:
    """(kept, held out): a document is held out by a hash of its text, ``HELD_OUT_PERCENT``% of
    them, so the split does not depend on the documents' order or on which others exist."""
    kept: list[str] = []
    held_out: list[str] = []
    for doc in docs:
        bucket = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "big") % 100
        (held_out if bucket < HELD_OUT_PERCENT else kept).append(doc)
    return kept, held_out
