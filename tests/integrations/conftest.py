"""The tests of the public integration paths share one tiny Gemma-2 and its topic bundle."""

from typing import Any

import pytest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The hf topic world (see hf_world.topic_world), built once per module."""
    from hf_world import topic_world

    return topic_world(tmp_path_factory.mktemp("hf"))
