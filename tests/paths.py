"""Where the repository and the tests' own files are, wherever a test module sits below tests/."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
