"""Biology and other subjects in WordNet's glosses: the forget and retain text for SmolLM2.

The forget side is the lexicographer files of anatomy, animals and plants; the retain side is
subjects far from biology (artifacts, people, places, communication, acts, ...). Files that mix
biology with other things (food, substances, states such as diseases, processes, natural
objects, bodily verbs) are on neither side of the SAE's layer choice; for the smollm2-bio case
(:func:`case_documents`) their biomedical synsets join the forget side, and biomedical synsets
of the retain files are dropped, so that the forget text covers medicine and genetics too and
the retain text holds none.
"""

from __future__ import annotations

import hashlib
import re
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
MIXED = ("noun.state", "noun.process", "noun.substance", "noun.phenomenon", "verb.body")
"""Files that mix biology with other things (diseases among other states, hormones among
other substances, ...)."""
BIOMEDICAL = re.compile(
    r"\b(disease|infection|infectious|virus|viral|bacteri\w*|cells?|genes?|genetics?|"
    r"chromosomes?|protein|hormones?|blood|tissues?|enzymes?|immun\w*|organisms?|vaccin\w*|"
    r"antibiotics?|pathogen\w*|DNA|RNA|membranes?|metabolism|physiology|anatomy|symptoms?|"
    r"inflammation|tumou?r|syndrome)\b",
    re.IGNORECASE,
)
"""Words that mark a synset as biology or medicine."""


def is_biomedical(line: str) -> bool:
    """Whether a synset's line (lemmas and gloss) speaks of biology or medicine."""
    return BIOMEDICAL.search(line) is not None


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


def case_documents(wordnet: Path) -> dict[str, list[str]]:
    """The smollm2-bio case's sides: ``forget`` holds the biology files and the biomedical
    synsets of the mixed ones, ``retain`` the retain files without their biomedical synsets."""
    biology = documents(wordnet, set(FORGET))
    medicine = documents(wordnet, set(MIXED), where=is_biomedical)
    other = documents(wordnet, set(RETAIN), where=lambda line: not is_biomedical(line))
    return {
        "forget": [doc for name in FORGET + MIXED for doc in {**biology, **medicine}.get(name, [])],
        "retain": [doc for name in RETAIN for doc in other.get(name, [])],
    }
