"""dsg plugin: the attacks shipped with dsg, run by ``dsg attack NAME``.

``dilution`` pads each question with benign text; ``format`` asks the same questions in the
prompt formats a user might type. Both build prompts and hand them to dsg's engine, which
answers them unguarded and under every configuration. See docs/robustness.md.
"""

from __future__ import annotations

from dsg.api import Register, hookimpl
from dsg_attacks.dilution import DilutionAttack
from dsg_attacks.formats import FormatAttack


@hookimpl
def register_attacks(register: Register) -> None:
    register(DilutionAttack())
    register(FormatAttack())
