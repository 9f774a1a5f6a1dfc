"""dsg plugin: the attacks shipped with dsg, run by ``dsg attack NAME``.

``dilution`` pads each question with benign text; ``format`` asks the same questions in the
prompt formats a user might type; ``relearn`` fine-tunes a copy of the model on hazard text.
Each hands its prompts (and, for ``relearn``, its model) to dsg's engine, which answers them
unguarded and under every configuration. See docs/robustness.md.
"""

from __future__ import annotations

from dsg.api import Register, hookimpl
from dsg_attacks.dilution import DilutionAttack
from dsg_attacks.formats import FormatAttack
from dsg_attacks.relearn import RelearnAttack


@hookimpl
def register_attacks(register: Register) -> None:
    register(DilutionAttack())
    register(FormatAttack())
    register(RelearnAttack())
