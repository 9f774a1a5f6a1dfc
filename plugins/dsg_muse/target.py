"""The MUSE target models are unpublished: their placeholder names explain what to pass instead.

The paper's MUSE targets are Gemma-2 models fine-tuned on each corpus; neither was released. The
cases name them ``muse-books-target`` / ``muse-news-target``; a local directory of that name is
picked up by the ``local`` loader first, and otherwise this loader stops with instructions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from dsg.api import UserError

if TYPE_CHECKING:
    import torch

PLACEHOLDERS = {"muse-books-target": "MUSE-Books", "muse-news-target": "MUSE-News"}


class MUSETargetPlaceholder:
    name = "muse-target"
    description = "Explains how to supply the unpublished MUSE target models"

    def can_load(self, spec: str) -> bool:
        return spec in PLACEHOLDERS

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> NoReturn:
        corpus = PLACEHOLDERS.get(spec, "MUSE")
        raise UserError(
            f"the {corpus} target model of the DSG paper (Gemma-2 fine-tuned on the {corpus} "
            "corpus) was never published; fine-tune one (e.g. with open-unlearning) and pass its "
            "transformers directory with --model PATH"
        )
