"""dsg plugin: the MUSE cases ``books`` and ``news`` (selection and muse-export only)."""

from __future__ import annotations

from dsg.api import Register, hookimpl
from dsg_muse.cases import BOOKS, NEWS
from dsg_muse.target import MUSETargetPlaceholder


@hookimpl
def register_cases(register: Register) -> None:
    register(BOOKS)
    register(NEWS)


@hookimpl
def register_model_loaders(register: Register) -> None:
    register(MUSETargetPlaceholder())
