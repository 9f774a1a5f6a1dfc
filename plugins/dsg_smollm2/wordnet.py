"""WordNet 3.0's glosses as documents, grouped by lexicographer file (noun.body, noun.plant, ...).

WordNet (Princeton University, the WordNet 3.0 licence: use, copy and redistribute with its
notice) is Debian's ``wordnet-base`` package. The text is not shipped with dsg; get it with::

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet

and pass ``wordnet/usr/share/wordnet`` (the folder holding ``data.noun``) to the functions here.
A document is ``DOC_SYNSETS`` consecutive synsets of one lexicographer file, one line each:
``lemma, lemma: gloss``, so every row the corpus stage cuts from it is about one subject.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from dsg.api import UserError

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
DOC_SYNSETS = 12
"""Synsets per document: about 1,000 characters, a few rows of 128 tokens."""
INSTALL = "apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet"

LEXICOGRAPHER_FILES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
"""The lexicographer files by number (WordNet's lexnames(5WN))."""

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def wordnet_folder(path: Path) -> Path:
    """``path`` if it holds WordNet's data files (or the extracted package does below it)."""
    for candidate in (path, path / "usr" / "share" / "wordnet"):
        if all((candidate / name).is_file() for name in DATA_FILES):
            return candidate
    raise UserError(f"{path} holds no WordNet data files ({', '.join(DATA_FILES)}); {INSTALL}")


def synsets(folder: Path) -> Iterator[tuple[str, str]]:
    """``(lexicographer file, "lemma, lemma: gloss")`` for every synset, in file order."""
    for name in DATA_FILES:
        with (folder / name).open(encoding="latin-1") as lines:
            for line in lines:
                if line.startswith("  ") or " | " not in line:  # the licence header
                    continue
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                count = int(fields[3], 16)
                lemmas = [_lemma(word) for word in fields[4 : 4 + 2 * count : 2]]
                lexname = LEXICOGRAPHER_FILES[int(fields[1])]
                yield lexname, f"{', '.join(dict.fromkeys(lemmas))}: {gloss.strip()}"


def documents(
    folder: Path,
    lexnames: set[str] | None = None,
    where: Callable[[str], bool] | None = None,
) -> dict[str, list[str]]:
    """Documents of ``DOC_SYNSETS`` synsets each, by lexicographer file (all, or ``lexnames``),
    of the synsets whose line passes ``where`` (all when None)."""
    by_file: dict[str, list[str]] = {}
    for lexname, line in synsets(wordnet_folder(folder)):
        if (lexnames is None or lexname in lexnames) and (where is None or where(line)):
            by_file.setdefault(lexname, []).append(line)
    return {
        lexname: [
            "\n".join(lines[start : start + DOC_SYNSETS])
            for start in range(0, len(lines), DOC_SYNSETS)
        ]
        for lexname, lines in by_file.items()
    }


def _lemma(word: str) -> str:
    return _ADJ_MARKER.sub("", word).replace("_", " ")
