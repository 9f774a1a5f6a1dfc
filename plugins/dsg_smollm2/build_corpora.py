"""Rebuild the smollm2-bio case's shipped corpora from WordNet (:mod:`dsg_smollm2.corpora`)::

apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet
python -m dsg_smollm2.build_corpora --wordnet wordnet
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsg_smollm2.corpora import CORPORA, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, required=True, help="extracted wordnet-base")
    parser.add_argument("--out", type=Path, default=CORPORA)
    args = parser.parse_args()
    print(build(args.wordnet, args.out))


if __name__ == "__main__":
    main()
