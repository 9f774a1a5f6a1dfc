"""Session checks that make a model and an SAE usable together."""

from pathlib import Path

import pytest
from rich.console import Console
from tiny import TinyWorld, tiny_registry

from dsg.api.interfaces import LoadedSAE
from dsg.engine.session import Session


def test_sae_of_a_sibling_model_warns_and_its_own_model_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    world = TinyWorld(tmp_path)
    session = Session.open({"case": "tiny"}, reg=tiny_registry(world))

    def warnings_for(sae_model: str) -> str:
        session.console = Console(record=True, width=200)
        session._sae = LoadedSAE(
            world.sae, "s", world.hook_name, world.hook_layer, model_name=sae_model
        )
        session.checked_pair()
        return session.console.export_text()

    # a base-model SAE on its instruct sibling (Gemma Scope "pt" on gemma-2-2b-it): warn
    assert "trained on 'tiny'" in warnings_for("tiny")  # the model is tiny-model
    assert "warning" not in warnings_for("tiny-model")
