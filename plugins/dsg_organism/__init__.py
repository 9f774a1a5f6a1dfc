"""dsg plugin: the model organism, dsg's default case.

A synthetic world (made-up pathogens to forget; cities, scholars and plants to keep), a small
Gemma-2 trained on it and an SAE on its residual stream, all shipped as package data so that
``dsg evaluate`` with no options runs on a laptop CPU in about a minute. See docs/organism.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsg.api import (
    CaseDefaults,
    DataSource,
    EvalSet,
    LoadedModel,
    LoadedSAE,
    MCQuestion,
    MuseData,
    PromptFormat,
    Register,
    UserError,
    hookimpl,
    parse_json,
    read_text_corpus,
    registered,
)

if TYPE_CHECKING:
    import torch

NAME = "organism"
DATA = Path(__file__).parent / "data"
WORLD = DATA / "world"
MODEL_DIR = DATA / "model"
SAE_DIR = DATA / "sae"
MUSE_DIR = DATA / "muse"
RETAIN_MODEL_DIR = DATA / "retain_model"
"""The organism's recipe without the pathogens (``python -m dsg_organism.retain_model``)."""
RETAIN_LOGS = DATA / "retain_model_eval.json"
"""Its min-k% MIA on the privleak splits (``python -m dsg_organism.privleak_reference``)."""
MUSE_TEMPLATE = {
    "user_start_tag": "Q: ",
    "user_end_tag": " ",
    "asst_start_tag": "A:",
    "asst_end_tag": ". ",
}
"""The organism's own question-and-answer documents' form ("Q: ... A: bats."), which it answers
in; it never saw open-unlearning's "Question:" tags (its tokenizer splits "Question" into four
pieces)."""


def _jsonl(path: Path) -> list[dict]:
    return [parse_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass(frozen=True)
class OrganismCase:
    """Forget the pathogens; keep cities, scholars and plants."""

    name: str = NAME
    description: str = (
        "model organism: a small Gemma-2 that knows a synthetic world; forget its made-up "
        "pathogens, keep its cities, scholars and plants (runs on CPU in about a minute)"
    )
    defaults: CaseDefaults = CaseDefaults(
        model=NAME,
        sae=NAME,
        ratio_percentiles=(90.0, 91.0),
        n_features=(100, 150, 180),
        multipliers=(500.0,),
        strategies=("dynamic", "static"),
        seq_len=128,
        dataset_size=1024,
        batch_size=32,
    )
    default: bool = True

    def forget_texts(self, data: DataSource) -> list[str]:
        return read_text_corpus(WORLD / "forget.jsonl")

    def retain_texts(self, data: DataSource) -> list[str]:
        return read_text_corpus(WORLD / "retain.jsonl")

    def eval_sets(self, data: DataSource) -> list[EvalSet]:
        try:
            sets = parse_json((WORLD / "sets.json").read_text(encoding="utf-8"))
            return [
                EvalSet(
                    name=s["name"],
                    subject=s["subject"],
                    questions=tuple(
                        MCQuestion(r["question"], tuple(r["choices"]), int(r["answer"]))
                        for r in _jsonl(WORLD / "eval" / f"{s['name']}.jsonl")
                    ),
                )
                for s in sets
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"the model organism's packaged questions in {WORLD} are damaged ({exc!r}); "
                "reinstall dsg"
            ) from None

    def prompt_format(self) -> PromptFormat | None:
        return None  # the packaged tokenizer carries Gemma's chat template

    def muse_data(self) -> MuseData:
        """MUSE-format data built from the world by ``python -m dsg_organism.muse``, with the
        retain model and its log that privleak reads as its reference."""
        return MuseData(
            split="Organism",
            folder=MUSE_DIR,
            template=dict(MUSE_TEMPLATE),
            retain_model=RETAIN_MODEL_DIR,
            retain_logs=RETAIN_LOGS,
        )


@contextmanager
def _packaged(what: str, folder: Path) -> Iterator[None]:
    """A damaged install: the loader's reason, and the fix that applies to packaged files."""
    try:
        yield
    except UserError as exc:
        raise UserError(
            f"the model organism's packaged {what} in {folder} is damaged; reinstall dsg ({exc})"
        ) from None


class OrganismModelLoader:
    name = NAME
    description = "the model organism's small Gemma-2 (packaged with dsg)"

    def can_load(self, spec: str) -> bool:
        return spec == NAME

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> LoadedModel:
        # The packaged model is a transformers directory: the `local` loader reads those.
        loader = registered("model_loaders", "local")
        with _packaged("model", MODEL_DIR):
            loaded = loader.load(str(MODEL_DIR), device=device, dtype=dtype, n_layers=n_layers)
        loaded.spec = NAME
        return loaded


class OrganismSAELoader:
    name = NAME
    description = "the model organism's SAE (packaged with dsg)"

    def can_load(self, spec: str) -> bool:
        return spec == NAME

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
        # The packaged SAE is a sae_lens directory: the `local-sae` loader reads those.
        loader = registered("sae_loaders", "local-sae")
        with _packaged("SAE", SAE_DIR):
            loaded = loader.load(str(SAE_DIR), device=device, dtype=dtype)
        weights = (SAE_DIR / "sae_weights.safetensors").read_bytes()
        loaded.spec, loaded.model_name = NAME, NAME
        loaded.fingerprint = hashlib.sha256(weights).hexdigest()
        return loaded


@hookimpl
def register_cases(register: Register) -> None:
    register(OrganismCase())


@hookimpl
def register_model_loaders(register: Register) -> None:
    register(OrganismModelLoader())


@hookimpl
def register_sae_loaders(register: Register) -> None:
    register(OrganismSAELoader())
