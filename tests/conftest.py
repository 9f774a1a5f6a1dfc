"""Test set-up: the suite never touches the network, runs on the CPU and writes no cache of the
user's."""

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Set before anything imports huggingface_hub, datasets or transformers.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="dsg-tests-datasets-")


@pytest.fixture
def use_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Serve a given TinyWorld through the registry; run in an empty directory."""
    from tiny import TinyWorld, tiny_registry

    import dsg.engine.session

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)

    def use(w: TinyWorld) -> None:
        reg = tiny_registry(w)
        monkeypatch.setattr(dsg.engine.session, "registry", lambda: reg)

    return use
