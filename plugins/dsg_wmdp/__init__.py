"""dsg plugin: the WMDP cases ``bio`` and ``cyber`` (Li et al., 2024), as in the DSG paper."""

from __future__ import annotations

from dsg.api import Register, hookimpl
from dsg_wmdp.cases import BIO, CYBER


@hookimpl
def register_cases(register: Register) -> None:
    register(BIO)
    register(CYBER)
