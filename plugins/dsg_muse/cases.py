"""The MUSE cases: forget a set of books (Harry Potter) or of BBC news articles (Shi et al., 2024).

Selection only: dsg picks the features and thresholds, and ``dsg muse-export`` hands the guardrail
to open-unlearning, which runs MUSE's own metrics. The corpora are the ``raw`` config of
``muse-bench/MUSE-Books`` / ``muse-bench/MUSE-News``: ``forget`` to forget, ``retain1`` to keep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dsg.api import CaseDefaults, DataSource, EvalSet, HubDataset, PromptFormat

# The hub revision the MUSE corpora are read at. None reads the latest; set DSG_MUSE_REVISION to a
# commit hash of the dataset repositories to pin it (results then stay comparable over time).
MUSE_REVISION: str | None = os.environ.get("DSG_MUSE_REVISION") or None
SAE = "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142"


@dataclass(frozen=True)
class MUSECase:
    """One MUSE corpus; ``model`` is the placeholder name of its (unpublished) target model."""

    name: str
    description: str
    defaults: CaseDefaults
    hub_id: str

    def _split(self, split: str) -> HubDataset:
        return HubDataset(self.hub_id, "raw", split, revision=MUSE_REVISION)

    def forget_texts(self, data: DataSource) -> list[str]:
        return self._split("forget").texts(data)

    def retain_texts(self, data: DataSource) -> list[str]:
        return self._split("retain1").texts(data)

    def eval_sets(self, data: DataSource) -> list[EvalSet]:
        return []  # evaluated by open-unlearning from the muse-export bundle

    def prompt_format(self) -> PromptFormat | None:
        return None

    def hub_datasets(self) -> list[HubDataset]:
        """Everything this case reads from the hub (for ``dsg data mirror``)."""
        return [self._split("forget"), self._split("retain1")]


BOOKS = MUSECase(
    name="books",
    description="MUSE-Books: forget the Harry Potter books (selection and muse-export only)",
    defaults=CaseDefaults(
        model="muse-books-target",
        sae=SAE,
        ratio_percentiles=(95.0, 90.0),
        n_features=(10, 20, 30),
        multipliers=(500.0,),
    ),
    hub_id="muse-bench/MUSE-Books",
)

NEWS = MUSECase(
    name="news",
    description="MUSE-News: forget BBC news articles (selection and muse-export only)",
    defaults=CaseDefaults(
        model="muse-news-target",
        sae=SAE,
        ratio_percentiles=(90.0,),
        n_features=(10, 20, 30),
        multipliers=(500.0,),
    ),
    hub_id="muse-bench/MUSE-News",
)
