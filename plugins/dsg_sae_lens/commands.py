"""``dsg saes``: list sae_lens's pretrained releases and their SAEs, the specs ``--sae`` takes."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from dsg.api import UserError, sae_specs


def saes(
    release: Annotated[
        str | None, typer.Argument(help="A release: list its SAE ids with model and hook.")
    ] = None,
    sae_release_pattern: Annotated[
        str | None, typer.Option(help="Regex (full match) over release names.")
    ] = None,
    sae_id_pattern: Annotated[
        str | None, typer.Option(help="Regex (full match) over SAE ids.")
    ] = None,
) -> None:
    """List sae_lens pretrained SAE releases and the SAEs other loaders list (such as one shipped
    with a plugin), or the SAEs of one release or of the patterns (from every loader that lists
    its SAEs, as SAE sweeps expand them; usable as --sae)."""
    from dsg_sae_lens import PretrainedSAELoader, pretrained

    given = {"RELEASE": release, "--sae-release-pattern": sae_release_pattern}
    for name, value in {**given, "--sae-id-pattern": sae_id_pattern}.items():
        if value == "":  # an empty pattern would list every SAE
            raise UserError(f"{name} must not be empty")
    if release is None and sae_release_pattern is None and sae_id_pattern is None:
        for name, count, model in pretrained.releases():
            typer.echo(f"{name}\t{model}\t{count} SAEs")
        for spec in sae_specs():  # other loaders' SAEs (a shipped one), as --sae takes them
            if not spec.startswith(f"{PretrainedSAELoader.name}:"):
                typer.echo(spec)
        return
    release_pattern = re.escape(release) if release is not None else sae_release_pattern
    specs = sae_specs(release_pattern or ".*", sae_id_pattern or ".*")
    mine = {
        f"{PretrainedSAELoader.name}:{e.release}/{e.sae_id}": e
        for e in pretrained.entries(release_pattern or ".*", sae_id_pattern or ".*")
    }
    for spec in specs:  # sae_lens's with model and hook; another loader's as --sae takes it
        entry = mine.get(spec)
        if entry is None:
            typer.echo(spec)
        else:
            typer.echo(f"{entry.release}/{entry.sae_id}\t{entry.model}\t{entry.hook_name or '?'}")
